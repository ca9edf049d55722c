"""Batch indexer: a catalog of images into one FAISS index per attribute (SPEC section 7)."""

FORMAT_VERSION = 1
SOFTWARE_VERSION = "0.1.0"

__all__ = ["FORMAT_VERSION", "SOFTWARE_VERSION"]
