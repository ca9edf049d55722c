"""Self-describing copies of published checkpoints, for the commands that load by path.

The indexer, the service and the demo rebuild their model from the checkpoint file alone
(SPEC section 3: the project's checkpoints name their attributes); the authors' released
``{"epoch", "model", "mAP"}`` files name none. :func:`self_describing` returns a project
checkpoint as it is and turns a published one, given its attribute set, into a project-format
copy in a folder, made once and then reused (its name carries the source's sha256 and the
attribute names). The same as a command:

    python -m model.convert fashionai_asenpp.pth.tar --attributes FashionAI --out fashionai.pt
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from .attributes import BUILTIN_ATTRIBUTES, parse_attributes_option, resolve_attributes
from .checkpoint import FORMAT, load_network, read_checkpoint_file, save_checkpoint
from .errors import CheckpointError
from .osutil import sha256_file

ATTRIBUTES_HINT = (f"{', '.join(BUILTIN_ATTRIBUTES)} or a comma-separated list of names, in "
                   "the order the checkpoint was trained with")


def is_published(path: str | Path) -> bool:
    """Whether ``path`` holds a checkpoint of the published release (not this project's)."""
    return read_checkpoint_file(path).get("format") != FORMAT


def _slug(attributes: str | list[str]) -> str:
    if isinstance(attributes, str):
        return attributes
    return "attrs" + hashlib.sha256("\n".join(attributes).encode()).hexdigest()[:8]


def _check_project(path: Path, attributes: str | list[str] | None) -> Path:
    if attributes is not None:
        given = [a.name for a in resolve_attributes(attributes)]
        own = [a.name for a in resolve_attributes(read_checkpoint_file(path)["attributes"])]
        if given != own:
            raise CheckpointError(f"{path} names its attributes {own}; --attributes gave "
                                  f"{given}: drop --attributes for this checkpoint")
    return path


def self_describing(path: str | Path, attributes: str | list[str] | None,
                    folder: str | Path) -> Path:
    """``path`` itself for a project checkpoint (checked against ``attributes`` when given);
    for a published one, its project-format copy in ``folder`` (written the first time).

    ``attributes``: a built-in set's name or a list of names (see ``--attributes``).
    CheckpointError for a published checkpoint without ``attributes``.
    """
    path = Path(path)
    if not is_published(path):
        return _check_project(path, attributes)
    if attributes is None:
        raise CheckpointError(
            f"{path} is a published checkpoint, which names no attributes: pass "
            f"--attributes ({ATTRIBUTES_HINT}), or convert it once with `python -m "
            f"model.convert {path} --attributes FashionAI --out {path.name.split('.')[0]}.pt` "
            "and use that file")
    sha = sha256_file(path)
    copy = Path(folder) / f"{path.name.split('.')[0]}-{sha[:12]}-{_slug(attributes)}.pt"
    if not copy.is_file():
        save_checkpoint(load_network(path, attributes), copy,
                        extra={"converted_from": {"path": str(path.resolve()), "sha256": sha}})
    return copy


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m model.convert CKPT --attributes SET --out FILE``: exit 0, or 2 with a
    one-line message."""
    p = argparse.ArgumentParser(prog="python -m model.convert",
                                description="A published checkpoint into a self-describing "
                                            "one that the indexer and the service load as is.")
    p.add_argument("checkpoint", type=Path, help="the published .pth.tar file")
    p.add_argument("--attributes", required=True, help=ATTRIBUTES_HINT)
    p.add_argument("--out", required=True, type=Path, help="the project checkpoint to write")
    args = p.parse_args(argv)
    try:
        attributes = parse_attributes_option(args.attributes)
        if not is_published(args.checkpoint):
            raise CheckpointError(f"{args.checkpoint} is already a project checkpoint")
        save_checkpoint(load_network(args.checkpoint, attributes), args.out)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.attributes})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
