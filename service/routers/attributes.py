"""The attributes the service can search on."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import StateDep
from ..errors import error_responses
from ..schemas import AttributeInfo, AttributesResponse
from . import V1

router = APIRouter(prefix=V1, tags=["attributes"])


@router.get("/attributes", response_model=AttributesResponse, summary="List attributes",
            responses=error_responses(401, 503))
async def list_attributes(state: StateDep) -> AttributesResponse:
    """Attribute names, their numbers of values and the sizes of their indexes, and the
    items' metadata columns (what `filters` and `group_by` can name)."""
    async with state.lease() as snap:
        out = []
        for name in snap.attributes:
            entry = snap.attribute_entry(name)
            out.append(AttributeInfo(
                name=name,
                n_values=entry.n_values if entry else None,
                index_size=int(snap.index.size(name)),
                index_type=entry.index.type if entry else None,
            ))
        columns = await snap.call(snap.index.metadata_columns)
        return AttributesResponse(attributes=out, metadata_columns=sorted(columns),
                                  index_version=snap.version, model=snap.model)
