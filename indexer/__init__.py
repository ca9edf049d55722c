"""Batch indexer: a catalog of images into one FAISS index per attribute (SPEC section 7)."""

from model.version import __version__ as SOFTWARE_VERSION

FORMAT_VERSION = 1

__all__ = ["FORMAT_VERSION", "SOFTWARE_VERSION"]
