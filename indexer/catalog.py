"""The catalog the indexer reads: the format's reader lives in :mod:`model.catalog` (the dataset
builder reads the same files); these are its names, under the indexer's import path."""

from model.catalog import (
    IMAGE_SUFFIXES,
    IMAGE_URL_SUFFIX,
    JSONL_SUFFIXES,
    MAX_ID_LENGTH,
    Catalog,
    CatalogError,
    CatalogItem,
    id_problem,
    load_catalog,
)

__all__ = ["IMAGE_SUFFIXES", "IMAGE_URL_SUFFIX", "JSONL_SUFFIXES", "MAX_ID_LENGTH", "Catalog",
           "CatalogError", "CatalogItem", "id_problem", "load_catalog"]
