"""Schemathesis against a live reference Engine on 127.0.0.1: requests generated from the Engine's own
GET /openapi.json (valid and invalid ones, with the API key) never get a server error, and every
answer matches the document (status codes, content types, response schemas, 405 with Allow, 401
without the key)."""

from __future__ import annotations

import httpx
import pytest

from engine import openapi

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

# Per operation and generation phase; about a minute for the whole API on a loaded machine.
MAX_EXAMPLES = 200
RELEASE = "2.3.1"


@pytest.fixture(scope="module")
def engine(start_engine):  # type: ignore[no-untyped-def]
    return start_engine(RELEASE)


# Generated from the document the Engine serves (test_the_engine_serves_the_document_that_is_tested);
# loaded from data so pytest can collect one test per operation before any Engine runs.
schema = schemathesis.openapi.from_dict(openapi.document(RELEASE))
# The key is sent with every request (below), not generated: a generated "missing key" case would be
# overridden by it. Schemathesis's ignored_auth check still sends each operation without the key and
# with a wrong one, and expects 401.
schema.config.generation.update(max_examples=MAX_EXAMPLES, database="none", with_security_parameters=False)
schema.config.output.sanitization.update(enabled=False)  # show the test key in reproduction commands


def test_the_engine_serves_the_document_that_is_tested(engine) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(f"{engine.url}/openapi.json").json() == schema.raw_schema


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_the_engine_api_has_no_server_errors(case, engine) -> None:  # type: ignore[no-untyped-def]
    response = case.call_and_validate(base_url=engine.url, headers={"X-Engine-Key": engine.key}, timeout=30)
    assert response.status_code < 500, (response.status_code, response.text)
    assert engine.running
