"""Markdown table of MAP reports written by `python -m model.evaluate --json`.

    python scripts/results_table.py NAME=REPORT.json [NAME=REPORT.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(reports: dict[str, dict]) -> str:
    names = list(reports)
    attrs = list(next(iter(reports.values()))["per_attribute"])
    counts = next(iter(reports.values()))["counts"]["queries"]
    head = "| model | " + " | ".join(f"{a} ({counts[a]})" for a in attrs) + " | overall |"
    lines = [head, "|---" * (len(attrs) + 2) + "|"]
    for name in names:
        r = reports[name]
        cells = [f"{r['per_attribute'][a]:.2f}" for a in attrs] + [f"**{r['overall']:.2f}**"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    loc = {n: r["localisation"] for n, r in reports.items() if "localisation" in r}
    if loc:
        la = list(next(iter(loc.values()))["per_attribute"])
        lines += ["", "| model (attention peak in the region's box, %) | "
                  + " | ".join(la) + " | overall |", "|---" * (len(la) + 2) + "|"]
        for name, r in loc.items():
            cells = [f"{r['per_attribute'][a]:.1f}" for a in la] + [f"**{r['overall']:.1f}**"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    reports = {}
    for arg in argv:
        name, _, path = arg.partition("=")
        reports[name] = json.loads(Path(path).read_text())
    print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
