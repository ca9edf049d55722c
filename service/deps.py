"""FastAPI dependencies: shared state, settings, the request's snapshot lease, stored item
lookups (404 for an unknown id) and API-key checks."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

import numpy as np
from fastapi import Depends, Form, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.convertors import Convertor, register_url_convertor

from indexer.items import Item

from .errors import ApiError
from .settings import Settings
from .state import ServiceState, Snapshot

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="ASEN_API_KEY (search) or ASEN_ADMIN_API_KEY."
)
_bearer = HTTPBearer(auto_error=False, description="Same key as X-API-Key, as a bearer token.")


# The dependencies below are ``async def`` although they never await: FastAPI runs a plain
# ``def`` dependency on its thread pool, a thread hand-off per dependency per request.


async def app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def app_state(request: Request) -> ServiceState:
    """The app's model/index holder."""
    state: ServiceState = request.app.state.service
    return state


class _AnyText(Convertor[str]):
    """Any text, ``/`` and newlines included (Starlette's ``path`` convertor, ``.*``, stops
    at a newline and would then match a shorter id)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_text", _AnyText())
#: the path parameter of every route that names an item (items.py, live.py)
ITEM_ID = "{item_id:any_text}"

#: A form model read from a multipart body: ``Annotated[SomeForm, MULTIPART]``.
MULTIPART = Form(media_type="multipart/form-data")

SettingsDep = Annotated[Settings, Depends(app_settings)]
StateDep = Annotated[ServiceState, Depends(app_state)]


async def leased_snapshot(state: StateDep) -> AsyncIterator[Snapshot]:
    """The served snapshot, leased until the endpoint returns; 503 not_ready before one."""
    async with state.lease() as snap:
        yield snap


SnapshotDep = Annotated[Snapshot, Depends(leased_snapshot, scope="function")]


def item_not_found(item_id: str) -> ApiError:
    """404 item_not_found for an id the served index does not have."""
    return ApiError(404, "item_not_found", f"no item with id {item_id!r}",
                    details={"item_id": item_id})


class StoredItems:
    """Indexed items of the request's snapshot, by id: the item, or its stored vectors (the
    query of /by-item, /rerank, /explain and composed references); 404 for an unknown id."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    async def item(self, item_id: str) -> Item:
        """The item with this id."""
        item = await self.snap.call(self.snap.index.get, item_id)
        if item is None:
            raise item_not_found(item_id)
        return item

    async def vectors(self, item_id: str, attributes: Sequence[str]) -> dict[str, np.ndarray]:
        """The item's stored vector [D] for each of ``attributes`` (none: only checked)."""
        position, stored = await self._stored([item_id], attributes)
        return {a: stored[a][position[item_id]] for a in attributes}

    async def reference_vectors(self, references: Sequence[tuple[str, str]]
                                ) -> list[np.ndarray]:
        """The stored vector [D] of each ``(item id, attribute)``, in order, read in one
        call on the index threads (404 for the first unknown id)."""
        if not references:
            return []
        position, stored = await self._stored([item_id for item_id, _ in references],
                                              [attribute for _, attribute in references])
        return [stored[attribute][position[item_id]] for item_id, attribute in references]

    async def _stored(self, item_ids: Sequence[str], attributes: Sequence[str]
                      ) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        """One index call: each id's row in the stored vectors [n, D] per attribute (404
        for the first unknown id)."""
        ids = list(dict.fromkeys(item_ids))
        items, stored = await self.snap.call(self.snap.index.embeddings, ids,
                                             list(dict.fromkeys(attributes)))
        position = {item.id: n for n, item in enumerate(items)}
        unknown = next((item_id for item_id in ids if item_id not in position), None)
        if unknown is not None:
            raise item_not_found(unknown)
        return position, stored


async def stored_items(snap: SnapshotDep) -> StoredItems:
    """The request snapshot's :class:`StoredItems`."""
    return StoredItems(snap)


StoredDep = Annotated[StoredItems, Depends(stored_items)]
HeaderKey = Annotated[str | None, Security(_api_key_header)]
BearerKey = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


def _presented_key(header: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    if header:
        return header
    if bearer is not None and bearer.credentials:
        return bearer.credentials
    return None


def _matches(presented: str | None, expected: str) -> bool:
    if presented is None:
        return False
    return secrets.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


async def require_api_key(settings: SettingsDep, header: HeaderKey, bearer: BearerKey) -> None:
    """Check the search API key when ASEN_API_KEY is set (the admin key is accepted too)."""
    if settings.api_key is None:
        return
    presented = _presented_key(header, bearer)
    keys = [settings.api_key.get_secret_value()]
    if settings.admin_api_key is not None:
        keys.append(settings.admin_api_key.get_secret_value())
    if not any(_matches(presented, key) for key in keys):
        raise ApiError(401, "unauthorized",
                       "missing or invalid API key (send it as X-API-Key or Bearer token)",
                       headers={"WWW-Authenticate": "Bearer"})


async def require_admin_key(settings: SettingsDep, header: HeaderKey, bearer: BearerKey) -> None:
    """Admin endpoints always need ASEN_ADMIN_API_KEY; they are off when it is unset."""
    if settings.admin_api_key is None:
        raise ApiError(403, "admin_disabled",
                       "admin endpoints are disabled: set ASEN_ADMIN_API_KEY to enable them")
    if not _matches(_presented_key(header, bearer), settings.admin_api_key.get_secret_value()):
        raise ApiError(401, "unauthorized", "missing or invalid admin API key",
                       headers={"WWW-Authenticate": "Bearer"})
