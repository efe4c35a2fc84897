"""Experiments: scenario files, run in simulation or on real processes, and their reports."""
