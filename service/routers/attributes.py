"""The attributes the service can search on."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..deps import get_state, require_api_key
from ..errors import error_responses
from ..schemas import AttributeInfo, AttributesResponse
from ..state import ServiceState

router = APIRouter(prefix="/v1", tags=["attributes"], dependencies=[Depends(require_api_key)])


@router.get("/attributes", response_model=AttributesResponse, summary="List attributes",
            responses=error_responses(401, 503))
async def list_attributes(state: ServiceState = Depends(get_state)) -> AttributesResponse:
    """Attribute names, their numbers of values and the sizes of their indexes."""
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
        return AttributesResponse(attributes=out, index_version=snap.version, model=snap.model)
