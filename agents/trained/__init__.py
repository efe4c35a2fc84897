"""Trained policies shipped with the package, each with its sidecar."""
