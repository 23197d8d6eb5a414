"""GET /openapi.json: the Engine's API document matches the app's routes, is valid OpenAPI 3.1, and its
request-body schemas are the ones the Engine enforces."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from starlette.routing import Route

from engine import openapi
from engine.app import create_app
from engine.core import EngineCore
from engine.releases import get_release
from engine.settings import Settings
from engine.validation import Invalid, validate
from test_engine_bad_input import BAD_FIELDS, MISSING, _bundle

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture
def app_routes(tmp_path: Path) -> Iterator[set[tuple[str, str]]]:
    """(path, method) of every route of the app, less the HEAD that Starlette adds to each GET."""
    settings = Settings(release=get_release("2.3.1"), brain=tmp_path / "brain.sqlite", host="127.0.0.1",
                        port=0, key_hash="0" * 64)
    core = EngineCore(settings)
    try:
        app = create_app(core)
        routes = [r for r in app.routes if isinstance(r, Route)]
        assert len(routes) == len(app.routes), "a route that is not a plain Route: describe it in engine.openapi"
        yield {(r.path, m.lower()) for r in routes for m in (r.methods or ()) if m != "HEAD"}
    finally:
        core._db.shutdown(wait=False)


def _operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item if method in HTTP_METHODS}


def test_every_route_is_in_the_document_and_every_operation_is_a_route(app_routes) -> None:  # type: ignore[no-untyped-def]
    operations = _operations(openapi.document("2.3.1"))
    assert app_routes - operations == set(), "routes missing from engine/openapi.py"
    assert operations - app_routes == set(), "operations in engine/openapi.py that the app does not serve"


def test_only_health_and_the_document_need_no_key() -> None:
    doc = openapi.document("2.3.1")
    assert doc["security"] == [{"EngineKey": []}]
    assert doc["components"]["securitySchemes"]["EngineKey"] == {
        **doc["components"]["securitySchemes"]["EngineKey"], "type": "apiKey", "in": "header", "name": "X-Engine-Key"}
    public = {(p, m) for p, item in doc["paths"].items() for m, op in item.items() if op.get("security") == []}
    assert public == {("/health", "get"), ("/openapi.json", "get")}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert (("401" in codes) != ((path, method) in public)), (path, method, codes)
            if "requestBody" in op:
                assert {"400", "413"} <= codes, (path, method)
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                assert schema["$ref"].rsplit("/", 1)[-1] in doc["components"]["schemas"]


def test_the_document_is_valid_openapi_3_1() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    doc = openapi.document("2.3.1")
    assert doc["openapi"].startswith("3.1")
    validator.validate(doc)


def _defs_refs(value: Any) -> Any:
    """A copy whose $refs point into $defs instead of the OpenAPI document's components."""
    if isinstance(value, dict):
        return {k: (v.replace("#/components/schemas/", "#/$defs/") if k == "$ref" else _defs_refs(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_defs_refs(v) for v in value]
    return value


def test_the_schemas_agree_with_a_full_json_schema_validator() -> None:
    """engine.validation implements a subset of JSON Schema; on the bundle cases it must agree with
    jsonschema (Draft 2020-12, OpenAPI 3.1's dialect), apart from what no schema can say (an edge naming
    a person the brain does not know, a 409)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = _defs_refs({**openapi.SCHEMAS["MemoryBundle"], "$defs": openapi.SCHEMAS})
    full = jsonschema.Draft202012Validator(schema)
    good = _bundle()
    assert full.is_valid(good)
    assert validate(openapi.SCHEMAS["MemoryBundle"], good, components=openapi.SCHEMAS) == good
    for store, field, value in BAD_FIELDS:
        bundle = _bundle(store, field, value)
        assert not full.is_valid(bundle), (store, field, value)
        with pytest.raises(Invalid, match=field):
            validate(openapi.SCHEMAS["MemoryBundle"], bundle, components=openapi.SCHEMAS)
    # Integral numbers are integers in JSON Schema: 3.0 is a rating, and comes back as 3.
    bundle = _bundle("learning_signals", "rating", 3.0)
    assert full.is_valid(bundle)
    checked = validate(openapi.SCHEMAS["MemoryBundle"], bundle, components=openapi.SCHEMAS)
    rating = checked["learning_signals"][0]["rating"]
    assert rating == 3 and type(rating) is int


def test_a_real_export_is_a_valid_bundle(start_engine) -> None:  # type: ignore[no-untyped-def]
    eng = start_engine("2.3.1")
    httpx.post(f"{eng.url}/execute", headers=eng.headers, timeout=10,
               json={"task_id": "openapi-1", "message": "The build server is Osprey. I met Priya and Omar."})
    httpx.post(f"{eng.url}/feedback", headers=eng.headers, json={"task_id": "openapi-1", "rating": 4})
    served = httpx.get(f"{eng.url}/openapi.json")  # no key needed
    assert served.status_code == 200 and served.headers["content-type"].startswith("application/json")
    assert served.json() == openapi.document("2.3.1")
    export = httpx.get(f"{eng.url}/memory/export", headers=eng.headers).json()
    assert export["knowledge"] and export["social"]["edges"] and export["learning_signals"]
    validate(openapi.SCHEMAS["MemoryExport"], export, components=openapi.SCHEMAS)
    assert validate(openapi.SCHEMAS["MemoryBundle"], copy.deepcopy(export), components=openapi.SCHEMAS) == export
    health = httpx.get(f"{eng.url}/health").json()
    validate(openapi.SCHEMAS["Health"], health, components=openapi.SCHEMAS)


@pytest.mark.parametrize(("value", "problem"), [
    (MISSING, "is required"),
    ("  ", "non-blank"),
    (None, "non-blank"),
])
def test_a_refusal_says_which_field_and_why(value: Any, problem: str) -> None:
    bundle = _bundle("conversations", "task_id", value)
    with pytest.raises(Invalid) as refused:
        validate(openapi.SCHEMAS["MemoryBundle"], bundle, components=openapi.SCHEMAS)
    assert "'conversations[0].task_id'" in str(refused.value) and problem in str(refused.value)
