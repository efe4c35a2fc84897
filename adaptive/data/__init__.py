"""Shipped data files: device and model profiles, published corrections."""
