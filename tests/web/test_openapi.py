"""An OpenAPI-driven run (schemathesis) of the REST API against the live server.

Bounded: a few generated requests per operation, loopback only. Every answer must be
documented (status code, content type, JSON schema) and none may be a server error.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.web.conftest import WebEnv

pytestmark = pytest.mark.timeout(300)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_conforms_to_its_schema(web_env: WebEnv) -> None:
    # The operations are looped over here rather than with schemathesis' pytest plugin,
    # which needs the schema at collection time (before the live server exists).
    schema = schemathesis.openapi.from_url(f"{web_env.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=8,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=web_env.url, checks=CHECKS)

        run()
