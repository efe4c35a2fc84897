"""The node runtime, its wire format, link emulation and the client.

Torch is imported only by :mod:`adaptive.runtime.node` (which executes model stages).
"""
