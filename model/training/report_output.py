"""The end of every ``model.evaluate`` task: the report printed, and written as JSON on request."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


def emit_report(report: Mapping[str, object], text: str, json_path: Path | None) -> None:
    """Print ``text`` (the report as a table) and, with ``json_path``, write ``report`` there."""
    print(text)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
