"""Hyperparameter files (YAML)."""
