"""isc: a toolkit for image copy-detection competitions (ISC 2021 / DISC21)."""

__version__ = "0.1.0"
