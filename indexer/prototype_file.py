"""The value prototypes and tag calibration of an index version (`prototypes.json`, issue 22):
what the version's tags were made with, read back by the service (`CatalogIndex.prototypes()`)
for value references and `POST /v1/tag`. numpy and the standard library only.

    {"calibration": {...} | null,
     "attributes": {attr: {"values": [int], "names": [str], "counts": [int],
                           "sources": ["catalog" | "train"], "vectors": [[float]]}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model.osutil import atomic_write_bytes
from model.prototypes import AttributePrototypes, Prototypes, ValuePrototype
from model.tagging import Calibration

PROTOTYPES_FILE = "prototypes.json"


def write_prototypes_file(folder: Path, prototypes: Prototypes,
                          calibration: Calibration | None) -> str:
    """Write `folder/prototypes.json`; returns its name."""
    doc: dict[str, Any] = {
        "calibration": None if calibration is None else calibration.to_dict(),
        "attributes": {a: {"values": [p.value for p in ap.values],
                           "names": [p.name for p in ap.values],
                           "counts": [p.count for p in ap.values],
                           "sources": [p.source for p in ap.values],
                           "vectors": ap.matrix().astype(np.float64).tolist()}
                       for a, ap in prototypes.attributes.items()}}
    atomic_write_bytes(folder / PROTOTYPES_FILE, json.dumps(doc).encode())
    return PROTOTYPES_FILE


def read_prototypes_file(path: Path) -> tuple[Prototypes, Calibration | None]:
    """The prototypes and calibration of a `prototypes.json` (ValueError when invalid)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        attrs = {}
        for attr, d in doc["attributes"].items():
            rows = zip(d["values"], d["names"], d["vectors"], d["counts"], d["sources"],
                       strict=True)
            attrs[str(attr)] = AttributePrototypes(str(attr), tuple(
                ValuePrototype(int(v), str(n), np.asarray(x, np.float32), int(c), str(s))
                for v, n, x, c, s in rows))
        cal = doc.get("calibration")
        return Prototypes(attrs), None if cal is None else Calibration.from_dict(cal)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: invalid prototypes file ({type(exc).__name__}: {exc})") \
            from None
