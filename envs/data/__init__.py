"""Shipped environment data: the default configuration and measured traces."""
