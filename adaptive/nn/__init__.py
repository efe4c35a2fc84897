"""The torch side: models by name, cutting them into blocks, and profiling blocks and links.

Every module here but :mod:`adaptive.nn.linkprofile` imports torch; import them lazily.
"""
