"""schemathesis against ``/openapi.json``: generated requests, valid and invalid, to
every route of a live server never get a 5xx, and every answer matches the schema the
server publishes, its error responses included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from akidb_embed import EmbeddingManager, MockEmbeddingProvider

EXAMPLES = 30  # per operation and mode: bounded, the whole test stays under a minute
# A schema-valid request may still be refused by a rule no schema states (the served
# model's name, the token limit with truncation "error", the dimensions of the model):
# those answers are declared (400/404/413) and checked for shape, but not refused.
BUSINESS_RULES = [schemathesis.checks.positive_data_acceptance]


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_every_route_conforms(serve_app: Callable[..., Any], mode: Any) -> None:
    with EmbeddingManager(MockEmbeddingProvider()) as manager:
        served = serve_app(manager, max_client_batch_size=64, max_input_chars=4096)
        schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/api/v1/embed", "/v1/embeddings", "/embed"}
        failures: list[str] = []
        for operation in operations:

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                case.call_and_validate(base_url=served.url, excluded_checks=BUSINESS_RULES)

            try:
                run()
            except Unsatisfiable:
                # No invalid request exists for a route without parameters or body.
                assert mode is schemathesis.GenerationMode.NEGATIVE and not operation.body
            except Exception as exc:  # every operation is tried; failures reported together
                failures.append(f"{operation.label}: {exc}")
        assert not failures, "\n\n".join(failures)
