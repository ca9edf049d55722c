"""The attributes the service can search on, with their values' item counts (facets)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ..deps import SnapshotDep
from ..errors import error_responses
from ..facets import index_facets, tagged_attributes
from ..protocols import CatalogIndexLike
from ..schemas import AttributeFacets, AttributeInfo, AttributesResponse
from . import V1

router = APIRouter(prefix=V1, tags=["attributes"])


def _read(index: CatalogIndexLike, attributes: list[str], min_confidence: float
          ) -> tuple[dict[str, int], frozenset[str], dict[str, AttributeFacets]]:
    """Each attribute's index size, the metadata columns and the tagged attributes' facet
    counts (all read the journal)."""
    _, facets = index_facets(index, tagged_attributes(index), min_confidence)
    return {a: int(index.size(a)) for a in attributes}, index.metadata_columns(), facets


@router.get("/attributes", response_model=AttributesResponse, summary="List attributes",
            responses=error_responses(401, 422, 503))
async def list_attributes(
    snap: SnapshotDep,
    min_confidence: Annotated[float, Query(
        ge=0, le=1, allow_inf_nan=False,
        description="Count predictions at this confidence or more (default 0: every item "
        "under one value, so each attribute's totals add up to the item count).")] = 0.0,
) -> AttributesResponse:
    """Attribute names, their numbers of values and the sizes of their indexes, each tagged
    attribute's values with their labelled and predicted item counts, and the items'
    metadata columns (what `filters` and `group_by` can name)."""
    sizes, columns, facets = await snap.call(_read, snap.index, snap.attributes,
                                             min_confidence)
    out = []
    for name in snap.attributes:
        entry = snap.attribute_entry(name)
        out.append(AttributeInfo(
            name=name,
            n_values=entry.n_values if entry else None,
            index_size=sizes[name],
            index_type=entry.index.type if entry else None,
            facets=facets.get(name),
        ))
    return AttributesResponse(attributes=out, metadata_columns=sorted(columns),
                              tagged_attributes=list(facets), min_confidence=min_confidence,
                              index_version=snap.version, model=snap.model)
