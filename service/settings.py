"""Service configuration, read from ``ASEN_*`` environment variables (see docs/API.md)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from indexer.filters import DEFAULT_MIN_CONFIDENCE
from model.osutil import available_cpus

#: Hard ceiling on ``k`` whatever ``ASEN_MAX_K`` says (also the documented schema maximum).
K_CEILING = 1000


class Settings(BaseSettings):
    """Every knob of the search API. Each field ``foo`` is set by ``ASEN_FOO``."""

    model_config = SettingsConfigDict(env_prefix="ASEN_", extra="ignore", frozen=True)

    # network
    host: str = Field("127.0.0.1", description="Interface that `python -m service` binds.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of `python -m service`.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the service and uvicorn.")
    root_path: str = Field("", description="Path prefix when served behind a proxy.")

    # model and index
    index_dir: Path = Field(Path("index"), description="INDEX_DIR written by `python -m indexer`.")
    checkpoint: Path | None = Field(
        None, description="Model checkpoint; default: the manifest's model.checkpoint."
    )
    device: Literal["cpu", "cuda"] | None = Field(
        None, description="Inference device; default: cuda if available, else cpu.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Inference precision: auto (bf16 where the CPU or GPU runs it "
        "natively and a start-up check agrees with fp32, else fp32), fp32, bf16, or fp16 "
        "(cuda only).")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads.")
    reload_interval_s: float = Field(
        5.0, ge=0, description="Seconds between index_version checks; 0 disables polling."
    )

    # requests
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest upload (413).")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest decoded image (width x height); bombs get 413."
    )
    default_k: int = Field(10, ge=1, le=K_CEILING, description="k when a query gives none.")
    max_k: int = Field(100, ge=1, le=K_CEILING, description="Largest k a client may ask for.")
    group_max_depth: int = Field(
        2000, ge=1, description="Most ranked items one group_by query scans for its groups.")
    min_confidence: float = Field(
        DEFAULT_MIN_CONFIDENCE, ge=0, le=1,
        description="Least calibrated confidence a predicted tag needs to match a filter "
        "(and be counted in a search's facets) when a request gives none.")

    # micro-batching and load shedding
    batch_max_size: int = Field(16, ge=1, le=1024, description="Images per forward pass; 1 = off.")
    batch_max_wait_ms: float = Field(
        5.0, ge=0, description="Longest a query waits for others to join its batch."
    )
    decode_concurrency: int = Field(
        default_factory=available_cpus, ge=1,
        description="Uploads decoded and preprocessed at once (default: the usable CPUs, "
                    "cgroup limit included); more "
                    "wait, so that decoding does not crowd out the model.")
    queue_max: int = Field(
        64, ge=1, description="Queries admitted at once (waiting + running); more get 503."
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503 responses.")

    # security
    api_key: SecretStr | None = Field(None, description="If set, required for /v1 endpoints.")
    admin_api_key: SecretStr | None = Field(
        None, description="Required for /v1/admin endpoints; unset disables them."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS."
    )
    image_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="If set, item images are only served from inside these folders.",
    )

    @field_validator("cors_origins", "image_roots", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key", "admin_api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _k_bounds(self) -> Settings:
        if self.default_k > self.max_k:
            raise ValueError(f"ASEN_DEFAULT_K ({self.default_k}) exceeds ASEN_MAX_K ({self.max_k})")
        return self

    @property
    def batching(self) -> bool:
        """Whether concurrent queries share forward passes."""
        return self.batch_max_size > 1


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once from the environment."""
    return Settings()
