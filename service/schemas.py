"""Pydantic schemas of every request and response of the API.

Requests are checked here, before a route runs: multipart JSON fields are ``Json[...]``
types (parsed and validated in one step), "exactly one of" rules and weight normalisation
are validators. What needs the served index (attribute names, ``k`` against
``ASEN_MAX_K``) is checked by the routes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import UploadFile
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Json,
    JsonValue,
    StringConstraints,
    model_validator,
)

from indexer.catalog import MAX_ID_LENGTH
from model.manipulation import DEFAULT_KEEP_MIX, DEFAULT_TARGET_WEIGHT

from .settings import K_CEILING

_K_DOC = "Number of results, 1..ASEN_MAX_K (100); default ASEN_DEFAULT_K (10)."
_FILTERS_DOC = (
    'Metadata filters as a JSON object of exact matches, e.g. {"category": "top"}; '
    "an item is kept when every listed metadata field equals the given value (a list of "
    'values: any of them, e.g. {"category": ["top", "dress"]}).'
)
_GROUP_DOC = (
    "Metadata column to group by, e.g. product_id: at most one result (its best-scoring "
    "item) per value of the column, still k results while the index has k groups. An item "
    "without the column is a group of its own. GET /v1/attributes lists the columns."
)
_MIN_CONFIDENCE_DOC = (
    "Least calibrated confidence a predicted tag needs to match a filter on a tagged "
    "attribute (0..1; an item's own catalog label always matches); default "
    "ASEN_MIN_CONFIDENCE (0.5). Also the confidence `facets` counts predictions from.")
_FACETS_DOC = (
    "Facet counts of the top N results (1..1000, may exceed k): per tagged attribute, "
    "each value's labelled and predicted items among them.")
MAX_FACETS = 1000
MAX_CANDIDATES = 1000
MAX_REFERENCES = 16
MAX_FILTER_VALUES = 100
MAX_FILTER_KEYS = 64
MAX_METADATA_BYTES = 64 * 1024
RESERVED_KEYS = ("id", "image")


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


class EmbedderInfo(BaseModel):
    """The embedder that produced the query embeddings (the `model` of every answer)."""

    version: str = Field(description="Short id of the checkpoint (sha256 prefix or file name).")
    checkpoint: str = Field(description="Checkpoint file name.")
    config: str | None = Field(None, description="Architecture configuration name.")
    dim: int = Field(description="Embedding size.")
    precision: str = Field(description="The precision it runs in (ASEN_PRECISION=auto "
                           "resolved): fp32, bf16 or fp16.")
    device: str


class PrecisionStatus(BaseModel):
    """How the served model's precision was chosen (ASEN_PRECISION)."""

    requested: str = Field(examples=["auto"], description="ASEN_PRECISION: auto, fp32, bf16 "
                           "or fp16.")
    chosen: str = Field(examples=["bf16"], description="The precision the model runs in.")
    reason: str = Field(description="Why: the hardware found, and the start-up check.")
    cosine: float | None = Field(
        None, description="auto's start-up check: minimum cosine of a few synthetic images' "
        "embeddings in the reduced precision to fp32 (kept at >= 0.999); null: no check ran.")


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


class TagInfo(BaseModel):
    """An item's value for an attribute: its own catalog label or a prediction."""

    value: str
    confidence: float = Field(ge=0, le=1, description="Calibrated probability that the "
                              "value is right (1 for a catalog label).")
    source: Literal["label", "prediction"]


class FacetValue(BaseModel):
    """How many items have a value: labelled with it, and predicted it."""

    value: str
    labelled: int = Field(ge=0)
    predicted: int = Field(ge=0, description="Predictions at min_confidence or more.")
    total: int = Field(ge=0)


class AttributeFacets(BaseModel):
    """Facet counts of one tagged attribute over a set of items."""

    values: list[FacetValue]
    below_min_confidence: int = Field(
        ge=0, description="Items predicted a value with less than min_confidence (counted "
        "under no value); the totals plus this add up to `items`.")
    items: int = Field(ge=0, description="Items counted.")


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
    tags: dict[str, TagInfo] = Field(
        default_factory=dict, description="attribute -> the item's tag (every tagged "
        "attribute; {} for an index built without tags).")
    group: str | None = Field(
        None, description="With group_by: the group's value; this item is the group's best "
        "(None: the item lacks the column and is a group of its own, or no grouping).")


class ReferenceInfo(BaseModel):
    """One reference of a composed query, as used."""

    attribute: str
    weight: float = Field(description="Normalised: the weights of all references sum to 1.")
    image: int | None = Field(None, description="Position of the upload in `images`.")
    item_id: str | None = None
    value: str | None = Field(None, description="A value of the attribute (its prototype is "
                              "the query), as the value space names it.")


class QueryInfo(BaseModel):
    """The query as the service understood it."""

    source: Literal["upload", "item", "compose"]
    item_id: str | None = None
    attribute: str | None = None
    weights: dict[str, float] | None = Field(None, description="Normalised to sum to 1.")
    k: int | None = Field(None, description="Results asked for (None: re-ranking, all).")
    filters: dict[str, str | list[str]] = Field(default_factory=dict)
    group_by: str | None = None
    min_confidence: float | None = Field(
        None, description="Confidence predicted tags needed to match filters and be counted "
        "in facets (the request's or ASEN_MIN_CONFIDENCE).")
    facets: int | None = Field(None, description="Top results the facets count.")
    references: list[ReferenceInfo] | None = Field(None, description="Composed queries only.")
    but_with: dict[str, str] | None = Field(
        None, description="\"Like this, but with\": the attributes set to a value (its "
        "prototype is their query, as the value space names it); every other attribute keeps "
        "the query's own embedding. `weights` lists every attribute ranked by.")


class SearchResponse(BaseModel):
    """A ranked list of catalog items and how it was computed."""

    query: QueryInfo
    results: list[ResultItem]
    facets: dict[str, AttributeFacets] | None = Field(
        None, description="With `facets`: attribute -> facet counts of the top N results.")
    timings: Timings
    model: EmbedderInfo
    index_version: str


class RerankResponse(BaseModel):
    """The known candidates ranked best first, and the ids that are not in the catalog."""

    query: QueryInfo
    results: list[ResultItem]
    unknown: list[str] = Field(description="Candidate ids not in the catalog (request order).")
    timings: Timings
    model: EmbedderInfo
    index_version: str


# ---------------------------------------------------------------- request fields


def normalised(weights: Sequence[float]) -> list[float]:
    """Non-negative weights scaled to sum to 1 (zeros stay 0); ValueError when all are 0."""
    top = max(weights, default=0.0)
    if top <= 0:
        raise ValueError("at least one weight must be > 0")
    total = math.fsum(w / top for w in weights)   # scaled first: no overflow
    return [w / top / total for w in weights]


def _blank_is_none(value: object) -> object:
    """An empty or blank form field is a field not given."""
    return None if isinstance(value, str) and not value.strip() else value


def _blank_is_empty_object(value: object) -> object:
    return "{}" if value is None or (isinstance(value, str) and not value.strip()) else value


def _filter_text(value: object) -> object:
    """A filter value as the text the index compares (numbers and booleans as JSON)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    return value   # a string passes; anything else is refused by the type


def _filter_values(value: object) -> object:
    if not isinstance(value, dict):
        return value
    if len(value) > MAX_FILTER_KEYS:
        raise ValueError(f"at most {MAX_FILTER_KEYS} filter keys, got {len(value)}")
    return {key: [_filter_text(v) for v in val] if isinstance(val, list) else _filter_text(val)
            for key, val in value.items()}


def _normalised_weights(weights: dict[str, float]) -> dict[str, float]:
    return dict(zip(weights, normalised(list(weights.values())), strict=True))


def _id_text(value: object) -> object:
    """Integers are taken as text (other systems' ids may be numbers); booleans are not."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: Control characters (Unicode category Cc) and lone surrogates (not text: they cannot be
#: encoded as UTF-8). Values may hold tab, line feed and carriage return; keys may not.
_KEY_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_VALUE_REFUSED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refused(text: str, pattern: re.Pattern[str]) -> str:
    found = pattern.search(text)
    if found is None:
        return text
    char = found.group()
    what = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
    raise ValueError(f"contains {what} (U+{ord(char):04X}) at position {found.start()}")


def clean_key(text: str) -> str:
    """A metadata key or filter key: no control character, no lone surrogate."""
    return _refused(text, _KEY_REFUSED)


def clean_value(text: str) -> str:
    """A text value: no control character but tab, line feed and carriage return, no lone
    surrogate."""
    return _refused(text, _VALUE_REFUSED)


def no_surrogate(text: str) -> str:
    """Any text: no lone surrogate (it cannot be stored, searched or answered as UTF-8)."""
    return _refused(text, _SURROGATE)


def _clean_json(value: JsonValue, where: str = "metadata") -> None:
    """Every key and text value of a JSON value is clean (:func:`clean_key`,
    :func:`clean_value`); ValueError naming the first that is not."""
    if isinstance(value, str):
        try:
            clean_value(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _clean_json(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            try:
                clean_key(k)
            except ValueError as exc:
                raise ValueError(f"{where}: key {ascii(k)} {exc}") from None
            _clean_json(v, f"{where}.{k}")


def _metadata_checked(meta: dict[str, JsonValue]) -> dict[str, JsonValue]:
    _clean_json(meta)
    reserved = [k for k in RESERVED_KEYS if k in meta]
    if reserved:
        raise ValueError(f"{reserved} are reserved keys")
    if len(json.dumps(meta, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"at most {MAX_METADATA_BYTES} bytes of JSON")
    return meta


def exactly_one(first: object, second: object, names: str) -> None:
    """ValueError unless exactly one of two fields (``names``: "a or b") is given."""
    if (first is None) == (second is None):
        raise ValueError(f"give exactly one of {names}")


#: Exact metadata matches: field -> value, or -> a list of values (any of them matches).
#: Numbers and booleans are sent to the index as their JSON text.
FilterKeyText = Annotated[str, AfterValidator(clean_key)]
FilterValueText = Annotated[str, AfterValidator(clean_value)]
MetadataFilters = Annotated[
    dict[FilterKeyText, FilterValueText | Annotated[
        list[FilterValueText], Field(min_length=1, max_length=MAX_FILTER_VALUES)]],
    BeforeValidator(_filter_values, json_schema_input_type=dict[
        str, str | float | bool | list[str | float | bool]]),
]
#: attribute -> finite weight >= 0, not all 0; normalised to sum to 1 (zeros kept as 0).
Weights = Annotated[
    dict[str, Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]],
    Field(min_length=1), AfterValidator(_normalised_weights),
]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
                   AfterValidator(no_surrogate)]
CandidateId = Annotated[ItemId, Field(strict=True), AfterValidator(clean_key),
                        BeforeValidator(_id_text, json_schema_input_type=str | int)]
#: The same types as multipart form fields: a JSON text (blank: not given).
FormFilters = Annotated[Json[MetadataFilters] | None, BeforeValidator(_blank_is_none)]
FormWeights = Annotated[Json[Weights] | None, BeforeValidator(_blank_is_none)]
FormItemId = Annotated[ItemId | None, BeforeValidator(_blank_is_none)]
GroupBy = Annotated[Annotated[str, StringConstraints(max_length=256),
                              AfterValidator(clean_key)] | None,
                    BeforeValidator(_blank_is_none)]
MinConfidence = Annotated[float | None, Field(ge=0, le=1, allow_inf_nan=False)]
Facets = Annotated[int | None, Field(ge=1, le=MAX_FACETS)]
FormMinConfidence = Annotated[MinConfidence, BeforeValidator(_blank_is_none)]
FormFacets = Annotated[Facets, BeforeValidator(_blank_is_none)]
Metadata = Annotated[Json[dict[str, JsonValue]], AfterValidator(_metadata_checked),
                     BeforeValidator(_blank_is_empty_object)]
#: A value of an attribute (matched trimmed and case-insensitive) and "but with" targets.
ValueName = Annotated[str, StringConstraints(min_length=1, max_length=256),
                      AfterValidator(clean_key)]
ButWith = Annotated[dict[Annotated[str, StringConstraints(max_length=256),
                                   AfterValidator(clean_key)], ValueName],
                    Field(min_length=1, max_length=MAX_REFERENCES)]
FormButWith = Annotated[Json[ButWith] | None, BeforeValidator(_blank_is_none)]
_BUT_WITH_DOC = (
    '"Like this, but with": JSON object attribute -> value, e.g. {"neckline": "v"}. '
    "Candidates by every attribute of the index: for the others (weight 1) the query's own "
    f"embedding mixed with its value's prototype (keep_mix {DEFAULT_KEEP_MIX:g}), the value's "
    f"prototype (weight {DEFAULT_TARGET_WEIGHT:g}) for these, as the composed query with those "
    "references; ranked by the kept attributes' similarity plus their tag agreement with the "
    "query and the items' probability of the target values (docs/API.md). Instead of "
    "`attribute`/`weights`.")


# ---------------------------------------------------------------- requests


class ImageSearchForm(BaseModel):
    """Multipart form of POST /v1/search."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile = Field(description="JPEG, PNG, WebP, ... at most ASEN_MAX_UPLOAD_BYTES.")
    attribute: str | None = Field(None, description="Attribute to compare on (GET "
                                  "/v1/attributes); or give `but_with`.")
    but_with: FormButWith = Field(None, description=_BUT_WITH_DOC,
                                  examples=['{"neckline": "v"}'])
    k: int | None = Field(None, ge=1, le=K_CEILING, description=_K_DOC)
    filters: FormFilters = Field(None, description=_FILTERS_DOC,
                                 examples=['{"category": "top"}'])
    group_by: GroupBy = Field(None, description=_GROUP_DOC)
    min_confidence: FormMinConfidence = Field(None, description=_MIN_CONFIDENCE_DOC)
    facets: FormFacets = Field(None, description=_FACETS_DOC)

    @model_validator(mode="after")
    def _one_query(self) -> ImageSearchForm:
        exactly_one(self.attribute, self.but_with, "attribute or but_with")
        return self


class MultiSearchForm(BaseModel):
    """Multipart form of POST /v1/search/multi."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile = Field(description="JPEG, PNG, WebP, ... at most ASEN_MAX_UPLOAD_BYTES.")
    weights: Json[Weights] = Field(
        description="JSON object attribute -> non-negative weight, e.g. "
        '{"collar_design": 0.7, "sleeve_length": 0.3}; normalised to sum to 1.',
        examples=['{"collar_design": 0.7, "sleeve_length": 0.3}'],
    )
    k: int | None = Field(None, ge=1, le=K_CEILING, description=_K_DOC)
    filters: FormFilters = Field(None, description=_FILTERS_DOC)
    group_by: GroupBy = Field(None, description=_GROUP_DOC)
    min_confidence: FormMinConfidence = Field(None, description=_MIN_CONFIDENCE_DOC)
    facets: FormFacets = Field(None, description=_FACETS_DOC)


class ItemSearchRequest(BaseModel):
    """Body of POST /v1/search/by-item: search with an indexed item's stored embedding."""

    model_config = ConfigDict(extra="forbid")

    item_id: ItemId
    attribute: str | None = Field(None, description="One attribute (or give weights).")
    weights: Weights | None = Field(
        None, description="Several attributes with weights (instead of attribute)."
    )
    but_with: ButWith | None = Field(None, description=_BUT_WITH_DOC,
                                     examples=[{"neckline": "v"}])
    k: int | None = Field(None, ge=1, le=K_CEILING, description=_K_DOC)
    filters: MetadataFilters | None = Field(
        None, description="Exact metadata matches, e.g. {\"category\": \"top\"} (a list of "
        "values: any of them).")
    include_self: bool = Field(False, description="Keep the query item in the results.")
    group_by: GroupBy = Field(None, description=_GROUP_DOC)
    min_confidence: MinConfidence = Field(None, description=_MIN_CONFIDENCE_DOC)
    facets: Facets = Field(None, description=_FACETS_DOC)

    @model_validator(mode="after")
    def _one_query(self) -> ItemSearchRequest:
        if sum(v is not None for v in (self.attribute, self.weights, self.but_with)) != 1:
            raise ValueError("give exactly one of attribute, weights or but_with")
        return self


class ComposeReference(BaseModel):
    """One reference of a composed query: an attribute taken from an upload, an item or a
    value's prototype."""

    model_config = ConfigDict(extra="forbid")

    attribute: str = Field(description="Attribute this reference contributes.")
    weight: float = Field(1.0, ge=0, allow_inf_nan=False,
                          description="Non-negative; all weights are normalised to sum to 1.")
    image: int | None = Field(None, ge=0, description="Position of an upload in `images`.")
    item_id: ItemId | None = Field(None, description="An indexed item (its stored embedding).")
    value: ValueName | None = Field(
        None, description="A value of the attribute, e.g. \"v\" for neckline: its prototype "
        "is the query (GET /v1/attributes or POST /v1/tag name the values).")

    @model_validator(mode="after")
    def _one_source(self) -> ComposeReference:
        given = [v for v in (self.image, self.item_id, self.value) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of image, item_id or value")
        return self


class ComposeForm(BaseModel):
    """Multipart form of POST /v1/search/compose."""

    model_config = ConfigDict(extra="forbid")

    images: list[UploadFile] = Field(
        default_factory=list, description="Uploaded reference images (repeat the field); "
        "a reference names one by its position, from 0.")
    references: Json[Annotated[list[ComposeReference],
                               Field(min_length=1, max_length=MAX_REFERENCES)]] = Field(
        description="JSON array of up to 16 references, each "
        '{"attribute", "weight", "image": <position in images>}, '
        '{"attribute", "weight", "item_id"} or {"attribute", "weight", "value"} (the '
        "value's prototype); score = sum of weight x similarity on the reference's "
        "attribute (weights normalised to sum to 1).",
        examples=['[{"attribute": "neckline", "weight": 0.6, "image": 0}, '
                  '{"attribute": "colour", "weight": 0.4, "item_id": "sku-42"}]'],
    )
    k: int | None = Field(None, ge=1, le=K_CEILING, description=_K_DOC)
    filters: FormFilters = Field(None, description=_FILTERS_DOC)
    group_by: GroupBy = Field(None, description=_GROUP_DOC)
    min_confidence: FormMinConfidence = Field(None, description=_MIN_CONFIDENCE_DOC)
    facets: FormFacets = Field(None, description=_FACETS_DOC)

    @model_validator(mode="after")
    def _uploads_referenced(self) -> ComposeForm:
        """Every reference names an upload in range or an item, every upload is named, and
        the weights are normalised (to sum to 1)."""
        n_images = len(self.images)
        for i, ref in enumerate(self.references):
            if ref.image is not None and ref.image >= n_images:
                raise ValueError(f"references.{i}.image: {ref.image} but {n_images} image(s) "
                                 "uploaded")
        unused = sorted(set(range(n_images))
                        - {r.image for r in self.references if r.image is not None})
        if unused:
            raise ValueError(f"images {unused} are uploaded but no reference names them")
        weights = normalised([r.weight for r in self.references])
        self.references = [r.model_copy(update={"weight": w})
                           for r, w in zip(self.references, weights, strict=True)]
        return self


class RerankForm(BaseModel):
    """Multipart form of POST /v1/rerank."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile | None = Field(None, description="Query image (or give item_id).")
    item_id: FormItemId = Field(None, description="Indexed item as the query.")
    attribute: str | None = Field(None, description="One attribute (or give weights).")
    weights: FormWeights = Field(
        None, description="JSON object attribute -> weight (instead of attribute).")
    candidates: Json[Annotated[list[CandidateId], Field(max_length=MAX_CANDIDATES)]] = Field(
        description=f"JSON array of up to {MAX_CANDIDATES} catalog item ids to re-rank "
        "(integers are taken as text).",
        examples=['["sku-1", "sku-7", "sku-42"]'])
    group_by: GroupBy = Field(None, description=_GROUP_DOC)

    @model_validator(mode="after")
    def _one_query(self) -> RerankForm:
        exactly_one(self.image, self.item_id, "image or item_id")
        exactly_one(self.attribute, self.weights, "attribute or weights")
        return self


class ExplainForm(BaseModel):
    """Multipart form of POST /v1/explain: an upload or an indexed item, and an attribute."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile | None = Field(None, description="Image to explain (or give item_id).")
    item_id: FormItemId = Field(None, description="Indexed item to explain.")
    attribute: str

    @model_validator(mode="after")
    def _one_source(self) -> ExplainForm:
        exactly_one(self.image, self.item_id, "image or item_id")
        return self


# ---------------------------------------------------------------- tags of an upload


class TagForm(BaseModel):
    """Multipart form of POST /v1/tag."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile = Field(description="JPEG, PNG, WebP, ... at most ASEN_MAX_UPLOAD_BYTES.")


class ValueConfidence(BaseModel):
    """A value of an attribute and its calibrated probability."""

    value: str
    confidence: float = Field(ge=0, le=1)


class UploadTag(BaseModel):
    """An attribute's most probable value for the upload, and the next ones."""

    value: str = Field(description="The nearest value prototype in the attribute's space.")
    confidence: float = Field(ge=0, le=1, description="Calibrated probability that `value` "
                              "is right (0.9: right about 90% of the time).")
    alternatives: list[ValueConfidence] = Field(
        description="The next two most probable values, most probable first.")
    values: list[str] = Field(description="Every known value of the attribute.")


class TagResponse(BaseModel):
    """The upload's value for every attribute that has values, from one model pass."""

    tags: dict[str, UploadTag] = Field(description="attribute -> its tag, in the index's "
                                       "attribute order; {} when no values are known.")
    values_source: Literal["index", "checkpoint"] | None = Field(
        description="Where the value prototypes come from: the served index (its catalog's "
        "labels over the checkpoint's), else the checkpoint; null: neither has any.")
    calibrated: bool = Field(description="Whether the confidences are calibrated (a "
                             "temperature per attribute, fitted on labelled validation data).")
    timings: Timings
    model: EmbedderInfo
    index_version: str


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
    model: EmbedderInfo
    index_version: str | None = None


# ---------------------------------------------------------------- catalog


class AttributeInfo(BaseModel):
    """One attribute the service can search on."""

    name: str
    n_values: int | None = None
    index_size: int = Field(description="Items in this attribute's index.")
    index_type: str | None = None
    facets: AttributeFacets | None = Field(
        None, description="A tagged attribute's values with their item counts over the whole "
        "index (null: the attribute has no tags).")


class AttributesResponse(BaseModel):
    attributes: list[AttributeInfo]
    metadata_columns: list[str] = Field(
        default_factory=list, description="Item metadata columns (for filters and group_by).")
    tagged_attributes: list[str] = Field(
        default_factory=list, description="Attributes every item has a tag for (filters "
        "and group_by on them use the tags).")
    min_confidence: float = Field(description="Confidence the facets' predictions have.")
    index_version: str
    model: EmbedderInfo


class ItemResponse(BaseModel):
    """A catalog item."""

    id: str
    metadata: dict[str, Any]
    image_url: str
    tags: dict[str, TagInfo] = Field(
        default_factory=dict, description="attribute -> the item's tag ({} without tags).")


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
    model: EmbedderInfo | None
    precision: PrecisionStatus | None = Field(
        None, description="How the model's precision was chosen (null: no model loaded).")
    loaded_at: str | None
    last_error: str | None
    queue_depth: int
    batching: bool
    batch_max_size: int
    batch_max_wait_ms: float
    queue_max: int
    live: JournalStatus | None = Field(
        None, description="The live-changes journal and what the served version applies of it.")


# ---------------------------------------------------------------- live catalog changes


class LiveItemForm(BaseModel):
    """Multipart form of PUT /v1/admin/items/{item_id}."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile = Field(description="The item's image (JPEG, PNG, WebP, ...), at most "
                              "ASEN_MAX_UPLOAD_BYTES; embedded for every attribute.")
    metadata: Metadata = Field(
        default_factory=dict, description='JSON object of the item\'s metadata, e.g. '
        '{"category": "top", "product_id": "p-7"} (used by filters and group_by; "id" and '
        f'"image" are reserved; at most {MAX_METADATA_BYTES} bytes).',
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


class JournalStatus(BaseModel):
    """The live-changes journal beside the index and the served version's view of it
    (``indexer.live.overlay.LiveStatus`` as served)."""

    model_config = ConfigDict(from_attributes=True)


    journal: str = Field(description="Path of journal.sqlite.")
    folded_seq: int = Field(description="Last journal seq the served index version contains.")
    applied_seq: int = Field(description="Last journal seq applied on top of it.")
    pending: int = Field(description="Changes not folded into an index version yet.")
    live_items: int = Field(description="Items served from the journal (put since the fold).")
    changed_ids: int = Field(description="Ids with a live change (put or delete) since the fold.")
    stale: bool = Field(description="The journal dropped changes this version needs: the "
                        "service serves an incomplete view until it loads the newer version.")
