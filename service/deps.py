"""FastAPI dependencies: shared state, settings and API-key checks."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError
from .settings import Settings
from .state import ServiceState

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="ASEN_API_KEY (search) or ASEN_ADMIN_API_KEY."
)
_bearer = HTTPBearer(auto_error=False, description="Same key as X-API-Key, as a bearer token.")


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


def get_state(request: Request) -> ServiceState:
    """The app's model/index holder."""
    return request.app.state.service


SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[ServiceState, Depends(get_state)]
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
