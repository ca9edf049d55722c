"""Property-based run of schemathesis over the live OpenAPI schema: no 5xx, schema honoured;
and a hypothesis run of the text schemathesis cannot send (lone surrogates, NULs and control
characters in every text field, thousands of filter keys): never a 5xx, never a traceback."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testkit import image_bytes

ADMIN_KEY = "st-admin-key"
CHECKS = ",".join([
    "not_a_server_error",          # never a 5xx, whatever the input
    "status_code_conformance",     # every status returned is documented
    "content_type_conformance",
    "response_schema_conformance",  # bodies match their documented schemas
    "ignored_auth",                # endpoints declaring a key really need it
])


def _schemathesis() -> list[str] | None:
    exe = Path(sys.executable).with_name("schemathesis")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("schemathesis")
    return [found] if found else None


@pytest.fixture(scope="module")
def server_env(fx):
    return {
        "ASEN_INDEX_DIR": str(fx.index_dir),
        "ASEN_API_KEY": "st-search-key",
        "ASEN_ADMIN_API_KEY": ADMIN_KEY,
        "ASEN_RELOAD_INTERVAL_S": "0",
    }


def test_schemathesis_finds_no_server_error(server, tmp_path):
    cmd = _schemathesis()
    if cmd is None:
        pytest.skip("schemathesis is not installed (pip install 'schemathesis>=4,<5')")
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [*cmd, "run", f"{server.url}/openapi.json",
         "--checks", CHECKS,
         "--max-examples", "25", "--seed", "20240601", "--no-shrink",
         "--generation-allow-x00", "true",          # NULs in every generated string
         "--workers", "1", "--request-timeout", "30",
         "--header", f"X-API-Key: {ADMIN_KEY}",
         "--report", "junit", "--report-junit-path", str(report)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    tested = re.search(r"Tested: (\d+)", out)
    assert tested and int(tested.group(1)) >= 15, out[-3000:]  # every operation was exercised
    # the server survived and still answers
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
    assert "Traceback" not in server.log(), server.log()[-4000:]


SEARCH_KEY = {"X-API-Key": ADMIN_KEY}   # the admin key opens every endpoint
#: Text a client can send in JSON (as \\u escapes): lone surrogates, NUL and other control
#: characters, non-BMP characters, quotes and SQL/JSON-path punctuation, mixed with plain text.
NASTY = st.text(alphabet=st.one_of(
    st.sampled_from(["\x00", "\ud800", "\udfff", "\x1b", "\x7f", "\x85", "\n", "\t", '"',
                     "'", "$", ".", "[", "*", "%", "\\", "\U0001f600", "\u202e"]),
    st.characters(codec="utf-8")), max_size=12)
FILTERS = st.dictionaries(NASTY, st.one_of(NASTY, st.lists(NASTY, min_size=1, max_size=3)),
                          max_size=4)


def _json(body: object) -> dict:
    """A JSON body as ASCII (lone surrogates travel as \\u escapes, as any client may send)."""
    return {"content": json.dumps(body), "headers": {**SEARCH_KEY,
                                                     "Content-Type": "application/json"}}


def _form_answers(c: httpx.Client, png: bytes, text: str, filters: dict
                  ) -> list[httpx.Response]:
    """The multipart endpoints with ``text`` in each text field (JSON fields as escapes)."""
    files = {"image": ("q.png", png, "image/png")}
    escaped = json.dumps(text)[1:-1]         # plain form fields carry UTF-8: surrogates escaped
    return [
        c.post("/v1/search", headers=SEARCH_KEY, files=files, data={
            "attribute": "colour", "filters": json.dumps(filters)}),
        c.post("/v1/search", headers=SEARCH_KEY, files=files, data={
            "attribute": "colour", "group_by": escaped}),
        c.post("/v1/rerank", headers=SEARCH_KEY, data={
            "item_id": "train-000001", "attribute": "colour",
            "candidates": json.dumps([text, "train-000002"])}),
        c.post("/v1/explain", headers=SEARCH_KEY, data={
            "item_id": escaped or "x", "attribute": "colour"}),
        # not an image: clean metadata ends in a 415, so the session's shared index is
        # never changed, while the metadata is still checked first
        c.put("/v1/admin/items/fuzz-item", headers=SEARCH_KEY,
              files={"image": ("q.png", b"not an image", "image/png")}, data={
            "metadata": json.dumps({text: text, "k": [text], "n": {text: 1}})}),
    ]


@pytest.fixture(scope="module")
def png() -> bytes:
    return image_bytes()


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=NASTY, filters=FILTERS)
def test_nasty_text_in_every_field_is_never_a_server_error(server, png, text, filters):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        answers = [
            c.post("/v1/search/by-item", **_json({"item_id": "train-000001",
                                                  "attribute": "colour", "filters": filters})),
            c.post("/v1/search/by-item", **_json({"item_id": text, "attribute": text})),
            c.post("/v1/search/by-item", **_json({"item_id": "train-000001",
                                                  "weights": {text: 1.0}})),
            c.post("/v1/search/by-item", **_json({"item_id": "train-000001",
                                                  "attribute": "colour", "group_by": text})),
            *_form_answers(c, png, text, filters),
        ]
    for r in answers:
        assert r.status_code < 500, (r.request.url, r.text[:500])
    assert "Traceback" not in server.log(), server.log()[-4000:]


@pytest.mark.parametrize("n_keys", [65, 998, 5000])
def test_thousands_of_filter_keys_are_a_422(server, png, n_keys):
    filters = {f"k{i}": "v" for i in range(n_keys)}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        by_item = c.post("/v1/search/by-item", **_json({
            "item_id": "train-000001", "attribute": "colour", "filters": filters}))
        upload = c.post("/v1/search", headers=SEARCH_KEY,
                        files={"image": ("q.png", png, "image/png")},
                        data={"attribute": "colour", "filters": json.dumps(filters)})
    for r in (by_item, upload):
        assert r.status_code == 422, r.text[:300]
        assert "at most 64 filter keys" in r.json()["error"]["message"]
    assert "Traceback" not in server.log()
