"""The search API: image + attribute in, nearest catalog items out (`python -m service`)."""

__version__ = "0.1.0"
