"""Command-line entry points: each module parses arguments and calls the stage's functions.

Imports: every stage, :mod:`isc.pipeline`; nothing imports it.
"""
