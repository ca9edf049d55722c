"""Helpers for the tests (not part of the installed package). Import them from here:
``from testkit import ServerProcess, tiny_index, ...``.

- ``datasets``: synthetic datasets, tiny random checkpoints, CSV catalogs.
- ``indexes``: the indexer CLI as a subprocess, the tiny synthetic index the service tests
  serve and its product catalog.
- ``servers``: free ports, readiness polling, ``python -m service`` in a subprocess and the
  app in this process.
- ``images``: encoded test images.
- ``api``: checks of the HTTP API's answers and upload fields.
"""

from testkit.api import error_of, image_file, ok, tagged_with
from testkit.datasets import (
    BROKEN_ITEMS,
    append_broken_items,
    random_unit_vectors,
    read_rows,
    subset_catalog,
    synthetic_dataset,
    tiny_checkpoint,
    write_rows,
)
from testkit.images import encode_image, image_bytes, write_image
from testkit.indexes import (
    FAST,
    REPO_ROOT,
    ProductCatalog,
    TinyIndex,
    build_index,
    embed_catalog,
    index_catalog,
    product_catalog,
    product_id,
    run_indexer,
    run_indexer_killed,
    run_indexer_stage,
    tiny_index,
)
from testkit.servers import InProcessServer, ServerProcess, free_port, wait_until_ready

__all__ = [
    "BROKEN_ITEMS", "FAST", "REPO_ROOT", "InProcessServer", "ProductCatalog", "ServerProcess",
    "TinyIndex", "append_broken_items", "build_index", "embed_catalog", "encode_image",
    "error_of", "free_port", "image_bytes", "image_file", "index_catalog", "ok",
    "product_catalog", "product_id", "random_unit_vectors", "read_rows", "run_indexer",
    "run_indexer_killed", "run_indexer_stage", "subset_catalog", "synthetic_dataset", "tagged_with",
    "tiny_checkpoint", "tiny_index", "wait_until_ready", "write_image", "write_rows",
]
