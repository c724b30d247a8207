"""Schemathesis fuzzes every operation of the OpenAPI document (bounded examples, with a
valid token): no input makes the service answer 5xx, and answers match the document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from taskflow import App
from taskflow.admin import create_app

from .conftest import OPS, Seeded, auth

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402


def test_no_input_makes_the_api_fail(admin_app: App, seeded: Seeded, token_file: Path) -> None:
    from schemathesis.python import asgi

    web = create_app(admin_app, tokens=token_file)
    try:
        schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", web)
        operations = [result.ok() for result in schema.get_all_operations()]
        described = {
            f"{m.upper()} {p}" for p, ops in schema.raw_schema["paths"].items() for m in ops
        }
        # Every operation but the document itself, which schemathesis leaves out.
        assert {op.label for op in operations} == described - {"GET /api/v1/openapi.json"}
        for operation in operations:
            _fuzz(operation)
    finally:
        asgi._shutdown()  # schemathesis shares one event-loop thread; stop it


def _fuzz(operation: Any) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate(
            headers=auth(OPS), checks=[not_a_server_error, response_schema_conformance]
        )

    check()
