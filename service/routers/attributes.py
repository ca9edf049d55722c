"""The attributes the service can search on."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import SnapshotDep
from ..errors import error_responses
from ..protocols import CatalogIndexLike
from ..schemas import AttributeInfo, AttributesResponse
from . import V1

router = APIRouter(prefix=V1, tags=["attributes"])


def _sizes_and_columns(index: CatalogIndexLike, attributes: list[str]
                       ) -> tuple[dict[str, int], frozenset[str]]:
    """Each attribute's index size and the metadata columns (both read the journal)."""
    return {a: int(index.size(a)) for a in attributes}, index.metadata_columns()


@router.get("/attributes", response_model=AttributesResponse, summary="List attributes",
            responses=error_responses(401, 503))
async def list_attributes(snap: SnapshotDep) -> AttributesResponse:
    """Attribute names, their numbers of values and the sizes of their indexes, and the
    items' metadata columns (what `filters` and `group_by` can name)."""
    sizes, columns = await snap.call(_sizes_and_columns, snap.index, snap.attributes)
    out = []
    for name in snap.attributes:
        entry = snap.attribute_entry(name)
        out.append(AttributeInfo(
            name=name,
            n_values=entry.n_values if entry else None,
            index_size=sizes[name],
            index_type=entry.index.type if entry else None,
        ))
    return AttributesResponse(attributes=out, metadata_columns=sorted(columns),
                              index_version=snap.version, model=snap.model)
