"""Property-based calls from the OpenAPI schema (schemathesis, few examples per operation): never a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import AUTH


def test_no_server_errors(settings: Settings) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    checked = 0
    for found in schema.get_all_operations():
        operation = found.ok()
        if operation.path.endswith("/events"):  # a stream; covered by the flow tests
            continue

        @given(case=operation.as_strategy(), authorised=st.booleans())
        @hypothesis_settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case, authorised: bool) -> None:
            response = case.call(headers=AUTH if authorised else {})
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)

        check()
        checked += 1
    assert checked >= 9
