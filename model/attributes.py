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


def resolve_attributes(spec: AttributesLike) -> list[AttributeSpec]:
    """Turn a built-in set name or a list of names / specs / (name, n) pairs into specs."""
    if isinstance(spec, str):
        if spec not in BUILTIN_ATTRIBUTES:
            raise ValueError(
                f"unknown attribute set {spec!r}; built-in sets: {', '.join(BUILTIN_ATTRIBUTES)}"
            )
        return list(BUILTIN_ATTRIBUTES[spec])
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
