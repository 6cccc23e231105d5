"""Property-based calls from the OpenAPI schema (schemathesis), valid and invalid data, with every check: no
5xx, every status and body as documented (``detail`` a string), content types, headers, auth not ignored,
invalid data rejected.

Reads need the token here (``read_access=token``), so both a reader's and a stranger's view are checked.
A few examples per operation in CI; ``PTYCHOSTREAM_SCHEMATHESIS_EXAMPLES=50`` (``tests/benchmarks/
bench_abuse.py schemathesis``) runs the long version and prints the table of statuses.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import CHECKS
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode

from service.app import create_app
from service.settings import Settings
from service.store import JobStore
from tests.service.conftest import AUTH

EXAMPLES = int(os.environ.get("PTYCHOSTREAM_SCHEMATHESIS_EXAMPLES", "4"))
# A schema-valid job may still name a file that does not exist or an endpoint the policy refuses:
# neither can be written in the schema, so for job submission 400/422 are an acceptable answer to valid data.
CONFIG = {
    "operations": [
        {
            "include-name": "POST /api/jobs",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "422"]}},
        }
    ]
}


@pytest.mark.parametrize("read_access", ["token", "open"])
def test_every_check_passes(settings: Settings, store: JobStore, read_access: str) -> None:
    settings = settings.model_copy(update={"read_access": read_access})
    store.announce("schemathesis-worker", {"device": "cpu", "job": ""}, ttl_s=600)  # health: a worker is alive
    app = create_app(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG))
    checks = CHECKS.get_all()
    statuses: Counter[tuple[str, int]] = Counter()
    operations = 0
    for found in schema.get_all_operations():
        operation = found.ok()

        modes = [operation.as_strategy(mode) for mode in GenerationMode]

        @given(case=st.one_of(modes), authorised=st.booleans())
        @hypothesis_settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: schemathesis.Case, authorised: bool) -> None:
            response = case.call(headers=AUTH if authorised else {})
            statuses[(case.operation.label, response.status_code)] += 1
            case.validate_response(response, checks=checks, headers=AUTH if authorised else {})

        check()
        operations += 1
    assert operations >= 11
    if EXAMPLES > 4:
        print(f"\nread_access={read_access}: {sum(statuses.values())} calls, {operations} operations")
        for (label, code), n in sorted(statuses.items()):
            print(f"  {label:55s} {code}  {n}")
    assert not [key for key in statuses if key[1] >= 500]
