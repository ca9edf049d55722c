"""Attribute descriptions and the published attribute sets (SPEC section 6)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AttributeSpec:
    """One design attribute: its name and number of values (0 when unknown)."""

    name: str
    n_values: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "n_values": self.n_values}


def _specs(pairs: Sequence[tuple[str, int]]) -> tuple[AttributeSpec, ...]:
    return tuple(AttributeSpec(n, v) for n, v in pairs)


BUILTIN_ATTRIBUTES: dict[str, tuple[AttributeSpec, ...]] = {
    "FashionAI": _specs([
        ("skirt_length", 6), ("sleeve_length", 9), ("coat_length", 8), ("pant_length", 6),
        ("collar_design", 5), ("lapel_design", 5), ("neckline_design", 10), ("neck_design", 5),
    ]),
    "DARN": _specs([
        ("clothes_category", 20), ("clothes_button", 13), ("clothes_color", 55),
        ("clothes_length", 7), ("clothes_pattern", 28), ("clothes_shape", 11),
        ("collar_shape", 26), ("sleeve_length", 8), ("sleeve_shape", 17),
    ]),
    "DeepFashion": _specs([
        ("texture", 156), ("fabric", 218), ("shape", 180), ("part", 216), ("style", 230),
    ]),
}

AttributesLike = str | Sequence[str | AttributeSpec | tuple | dict]


def builtin_attributes(name: str) -> tuple[AttributeSpec, ...] | None:
    """The built-in set called ``name`` (case-insensitive: "fashionai" too), or None."""
    for key, specs in BUILTIN_ATTRIBUTES.items():
        if key.lower() == name.strip().lower():
            return specs
    return None


def parse_attributes_option(text: str) -> str | list[str]:
    """A command line's ``--attributes``: a built-in set's name, or a comma-separated list
    of names (one name: end it with a comma). ValueError for a single unknown set name."""
    names = [n.strip() for n in text.split(",")]
    if len(names) == 1:
        if builtin_attributes(text) is None:
            raise ValueError(f"--attributes {text!r}: not a built-in attribute set "
                             f"({', '.join(BUILTIN_ATTRIBUTES)}) nor a comma-separated list "
                             "of names (one name: end it with a comma)")
        return text.strip()
    names = [n for n in names if n]
    if not names:
        raise ValueError("--attributes: no attribute names given")
    return names


def resolve_attributes(spec: AttributesLike) -> list[AttributeSpec]:
    """Turn a built-in set name or a list of names / specs / (name, n) pairs into specs."""
    if isinstance(spec, str):
        found = builtin_attributes(spec)
        if found is None:
            raise ValueError(
                f"unknown attribute set {spec!r}; built-in sets: {', '.join(BUILTIN_ATTRIBUTES)}"
            )
        return list(found)
    out: list[AttributeSpec] = []
    for item in spec:
        if isinstance(item, AttributeSpec):
            out.append(item)
        elif isinstance(item, str):
            out.append(AttributeSpec(item, 0))
        elif isinstance(item, dict):
            out.append(AttributeSpec(str(item["name"]), int(item.get("n_values", 0))))
        else:
            name, n_values = item
            out.append(AttributeSpec(str(name), int(n_values)))
    names = [a.name for a in out]
    if not out:
        raise ValueError("the attribute list is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate attribute names in {names}")
    return out
