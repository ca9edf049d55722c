"""Pydantic schemas of every request and response of the API."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .settings import K_CEILING

_K_DOC = "Number of results, 1..ASEN_MAX_K (100); default ASEN_DEFAULT_K (10)."
_FILTERS_DOC = (
    'Metadata filters as a JSON object of exact matches, e.g. {"category": "top"}; '
    "an item is kept when every listed metadata field equals the given value."
)
_GROUP_DOC = (
    "Metadata column to group by, e.g. product_id: at most one result (its best-scoring "
    "item) per value of the column, still k results while the index has k groups. An item "
    "without the column is a group of its own. GET /v1/attributes lists the columns."
)
MAX_CANDIDATES = 1000
MAX_REFERENCES = 16


# ---------------------------------------------------------------- errors


class ErrorBody(BaseModel):
    """What went wrong: a stable machine code, a human message and optional details."""

    code: str = Field(examples=["unknown_attribute"])
    message: str = Field(examples=["unknown attribute 'colr'; valid attributes: collar, sleeve"])
    details: Any = Field(None, description="Machine-readable context, e.g. the valid values.")


class ErrorResponse(BaseModel):
    """The body of every non-2xx response."""

    error: ErrorBody
    request_id: str | None = Field(None, description="Also sent as the X-Request-ID header.")


# ---------------------------------------------------------------- shared parts


class ModelInfo(BaseModel):
    """The embedder that produced the query embeddings."""

    version: str = Field(description="Short id of the checkpoint (sha256 prefix or file name).")
    checkpoint: str = Field(description="Checkpoint file name.")
    config: str | None = Field(None, description="Architecture configuration name.")
    dim: int = Field(description="Embedding size.")
    precision: str
    device: str


class Timings(BaseModel):
    """Milliseconds spent in each stage of this request."""

    decode_ms: float | None = Field(None, description="Reading and decoding the upload.")
    queue_ms: float | None = Field(None, description="Waiting for a micro-batch and the model.")
    embed_ms: float | None = Field(None, description="The model forward pass (whole batch).")
    search_ms: float | None = Field(None, description="Nearest-neighbour search and lookup.")
    total_ms: float = Field(description="Whole request inside the service.")
    batch_size: int | None = Field(None, description="Images in the forward pass this query rode.")


class Box(BaseModel):
    """A rectangle in original image pixels: x0 <= x < x1, y0 <= y < y1."""

    x0: int
    y0: int
    x1: int
    y1: int


class ResultItem(BaseModel):
    """One catalog item in a ranking."""

    rank: int = Field(ge=1)
    id: str
    score: float = Field(description="Similarity (inner product of unit vectors, -1..1).")
    scores: dict[str, float] | None = Field(
        None, description="Per-attribute similarities (multi-attribute and composed queries)."
    )
    metadata: dict[str, Any]
    image_url: str
    group: str | None = Field(
        None, description="With group_by: the group's value; this item is the group's best "
        "(None: the item lacks the column and is a group of its own, or no grouping).")


class ReferenceInfo(BaseModel):
    """One reference of a composed query, as used."""

    attribute: str
    weight: float = Field(description="Normalised: the weights of all references sum to 1.")
    image: int | None = Field(None, description="Position of the upload in `images`.")
    item_id: str | None = None


class QueryInfo(BaseModel):
    """The query as the service understood it."""

    source: Literal["upload", "item", "compose"]
    item_id: str | None = None
    attribute: str | None = None
    weights: dict[str, float] | None = Field(None, description="Normalised to sum to 1.")
    k: int | None = Field(None, description="Results asked for (None: re-ranking, all).")
    filters: dict[str, str] = Field(default_factory=dict)
    group_by: str | None = None
    references: list[ReferenceInfo] | None = Field(None, description="Composed queries only.")


class SearchResponse(BaseModel):
    """A ranked list of catalog items and how it was computed."""

    query: QueryInfo
    results: list[ResultItem]
    timings: Timings
    model: ModelInfo
    index_version: str


class RerankResponse(BaseModel):
    """The known candidates ranked best first, and the ids that are not in the catalog."""

    query: QueryInfo
    results: list[ResultItem]
    unknown: list[str] = Field(description="Candidate ids not in the catalog (request order).")
    timings: Timings
    model: ModelInfo
    index_version: str


# ---------------------------------------------------------------- requests


class ImageSearchForm(BaseModel):
    """Multipart form of POST /v1/search."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile = Field(description="JPEG, PNG, WebP, ... at most ASEN_MAX_UPLOAD_BYTES.")
    attribute: str = Field(description="Attribute to compare on (GET /v1/attributes).")
    k: int | None = Field(None, ge=1, le=K_CEILING, description=_K_DOC)
    filters: str | None = Field(None, description=_FILTERS_DOC, examples=['{"category": "top"}'])
    group_by: str | None = Field(None, max_length=256, description=_GROUP_DOC)


class MultiSearchForm(BaseModel):
    """Multipart form of POST /v1/search/multi."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile = Field(description="JPEG, PNG, WebP, ... at most ASEN_MAX_UPLOAD_BYTES.")
    weights: str = Field(
        description="JSON object attribute -> non-negative weight, e.g. "
        '{"collar_design": 0.7, "sleeve_length": 0.3}; normalised to sum to 1.',
        examples=['{"collar_design": 0.7, "sleeve_length": 0.3}'],
    )
    k: int | None = Field(None, ge=1, le=K_CEILING, description=_K_DOC)
    filters: str | None = Field(None, description=_FILTERS_DOC)
    group_by: str | None = Field(None, max_length=256, description=_GROUP_DOC)


class ItemSearchRequest(BaseModel):
    """Body of POST /v1/search/by-item: search with an indexed item's stored embedding."""

    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(min_length=1, max_length=512)
    attribute: str | None = Field(None, description="One attribute (or give weights).")
    weights: dict[str, float] | None = Field(
        None, description="Several attributes with weights (instead of attribute)."
    )
    k: int | None = Field(None, ge=1, le=K_CEILING, description=_K_DOC)
    filters: dict[str, str | int | float | bool] | None = Field(
        None, description="Exact metadata matches, e.g. {\"category\": \"top\"}.")
    include_self: bool = Field(False, description="Keep the query item in the results.")
    group_by: str | None = Field(None, max_length=256, description=_GROUP_DOC)


class ComposeReference(BaseModel):
    """One reference of a composed query: an attribute taken from an upload or an item."""

    model_config = ConfigDict(extra="forbid")

    attribute: str = Field(description="Attribute this reference contributes.")
    weight: float = Field(1.0, ge=0, allow_inf_nan=False,
                          description="Non-negative; all weights are normalised to sum to 1.")
    image: int | None = Field(None, ge=0, description="Position of an upload in `images`.")
    item_id: str | None = Field(None, min_length=1, max_length=512,
                                description="An indexed item (its stored embedding).")

    @model_validator(mode="after")
    def _one_source(self) -> ComposeReference:
        if (self.image is None) == (self.item_id is None):
            raise ValueError("give exactly one of image or item_id")
        return self


class ComposeForm(BaseModel):
    """Multipart form of POST /v1/search/compose."""

    model_config = ConfigDict(extra="forbid")

    images: list[UploadFile] = Field(
        default_factory=list, description="Uploaded reference images (repeat the field); "
        "a reference names one by its position, from 0.")
    references: str = Field(
        description="JSON array of up to 16 references, each "
        '{"attribute", "weight", "image": <position in images>} or '
        '{"attribute", "weight", "item_id"}; score = sum of weight x similarity on the '
        "reference's attribute (weights normalised to sum to 1).",
        examples=['[{"attribute": "neckline", "weight": 0.6, "image": 0}, '
                  '{"attribute": "colour", "weight": 0.4, "item_id": "sku-42"}]'],
    )
    k: int | None = Field(None, ge=1, le=K_CEILING, description=_K_DOC)
    filters: str | None = Field(None, description=_FILTERS_DOC)
    group_by: str | None = Field(None, max_length=256, description=_GROUP_DOC)


class RerankForm(BaseModel):
    """Multipart form of POST /v1/rerank."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile | None = Field(None, description="Query image (or give item_id).")
    item_id: str | None = Field(None, max_length=512, description="Indexed item as the query.")
    attribute: str | None = Field(None, description="One attribute (or give weights).")
    weights: str | None = Field(
        None, description="JSON object attribute -> weight (instead of attribute).")
    candidates: str = Field(
        description=f"JSON array of up to {MAX_CANDIDATES} catalog item ids to re-rank.",
        examples=['["sku-1", "sku-7", "sku-42"]'])
    group_by: str | None = Field(None, max_length=256, description=_GROUP_DOC)


class ExplainForm(BaseModel):
    """Multipart form of POST /v1/explain: an upload or an indexed item, and an attribute."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile | None = Field(None, description="Image to explain (or give item_id).")
    item_id: str | None = Field(None, max_length=512, description="Indexed item to explain.")
    attribute: str


# ---------------------------------------------------------------- explain


class ExplainResponse(BaseModel):
    """Where the model looks for an attribute."""

    attribute: str
    image_size: tuple[int, int] = Field(description="(width, height) of the image.")
    attention: list[list[float]] = Field(description="Attention map rows (sums to 1).")
    attention_region: Box = Field(
        description="Part of the image the attention map covers (the model's centre crop)."
    )
    box: Box | None = Field(None, description="RoI the local branch zoomed into (None: global).")
    overlay_png: str = Field(description="Heat-map overlay with the box, base64-encoded PNG.")
    timings: Timings
    model: ModelInfo
    index_version: str | None = None


# ---------------------------------------------------------------- catalog


class AttributeInfo(BaseModel):
    """One attribute the service can search on."""

    name: str
    n_values: int | None = None
    index_size: int = Field(description="Items in this attribute's index.")
    index_type: str | None = None


class AttributesResponse(BaseModel):
    attributes: list[AttributeInfo]
    metadata_columns: list[str] = Field(
        default_factory=list, description="Item metadata columns (for filters and group_by).")
    index_version: str
    model: ModelInfo


class ItemResponse(BaseModel):
    """A catalog item."""

    id: str
    metadata: dict[str, Any]
    image_url: str


class ItemsPage(BaseModel):
    """A page of catalog items in index order."""

    items: list[ItemResponse]
    total: int
    offset: int
    limit: int
    index_version: str


# ---------------------------------------------------------------- health and admin


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    index_version: str
    model_version: str
    items: int
    attributes: list[str]


class ReloadResponse(BaseModel):
    """Outcome of an index reload."""

    reloaded: bool = Field(description="Whether a new index is now being served.")
    index_version: str | None
    previous_version: str | None
    message: str


class AdminStatus(BaseModel):
    """Runtime state for operators."""

    ready: bool
    index_dir: str
    index_version: str | None
    model: ModelInfo | None
    loaded_at: str | None
    last_error: str | None
    queue_depth: int
    batching: bool
    batch_max_size: int
    batch_max_wait_ms: float
    queue_max: int
    live: LiveStatus | None = Field(
        None, description="The live-changes journal and what the served version applies of it.")


# ---------------------------------------------------------------- live catalog changes


class LiveItemForm(BaseModel):
    """Multipart form of PUT /v1/admin/items/{item_id}."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile = Field(description="The item's image (JPEG, PNG, WebP, ...), at most "
                              "ASEN_MAX_UPLOAD_BYTES; embedded for every attribute.")
    metadata: str | None = Field(
        None, description='JSON object of the item\'s metadata, e.g. {"category": "top", '
        '"product_id": "p-7"} (used by filters and group_by; "id" and "image" are reserved).',
        examples=['{"category": "top"}'])


class LiveChangeResponse(BaseModel):
    """A live change, durable in the journal and visible to every search from now on."""

    id: str
    op: Literal["put", "delete"]
    seq: int = Field(description="The change's journal sequence number: one order for the "
                     "changes of every replica; the highest seq of an id wins.")
    replaced: bool = Field(description="put: an item with this id existed and was replaced; "
                           "delete: always true.")
    item: ItemResponse | None = Field(None, description="put: the item as now served.")
    index_version: str


class LiveStatus(BaseModel):
    """The journal beside the index and the served version's view of it."""

    journal: str = Field(description="Path of journal.sqlite.")
    folded_seq: int = Field(description="Last journal seq the served index version contains.")
    applied_seq: int = Field(description="Last journal seq applied on top of it.")
    pending: int = Field(description="Changes not folded into an index version yet.")
    live_items: int = Field(description="Items served from the journal (put since the fold).")
    changed_ids: int = Field(description="Ids with a live change (put or delete) since the fold.")
    stale: bool = Field(description="The journal dropped changes this version needs: the "
                        "service serves an incomplete view until it loads the newer version.")
