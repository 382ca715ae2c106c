"""Property-based API testing against the app's own OpenAPI schema: no 5xx, responses match the schema.

Schemathesis generates valid and invalid requests (JSON and multipart bodies, path ids, headers) for every
operation; bounded to a few examples each so the whole run stays well under a minute on 2 cores.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from clipforge.service.app import create_app  # noqa: E402
from clipforge.service.deps import maybe_index  # noqa: E402
from clipforge.service.settings import Settings  # noqa: E402
from clipforge.service.store import IndexHandle  # noqa: E402
from tests.service.conftest import DEFAULTS, WRITE_KEY  # noqa: E402
from tests.service.fakes import FakeIndex, shape_items  # noqa: E402

pytestmark = pytest.mark.slow
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


MODES = ("positive", "negative")


@pytest.fixture(scope="module")
def api_schema(micro_bundle: Path, bundle: Any) -> Any:
    app = create_app(Settings(bundle=micro_bundle, max_wait_ms=1.0, **DEFAULTS))
    handle = IndexHandle(FakeIndex(bundle, shape_items()))
    app.dependency_overrides[maybe_index] = lambda: handle
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    schemathesis.python.asgi.shutdown_lifespans()  # the app's lifespan was started by schemathesis
    handle.close()


def test_api_conforms_to_its_schema(api_schema: Any) -> None:
    """Every operation, valid and invalid inputs: no 5xx, documented status codes, content types and bodies.

    (Driven with `@given` per operation rather than `schema.parametrize()`, whose pytest plugin does not
    support pytest 9 yet.)"""
    from schemathesis.generation import GenerationMode

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    for operation in operations:
        for mode in MODES:

            @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
            @settings(
                max_examples=10,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                # with the write key, so the write endpoints are exercised past authentication too
                response = case.call_and_validate(headers={"X-API-Key": WRITE_KEY}, checks=CHECKS)
                statuses[response.status_code // 100] += 1

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body): nothing to test
                assert mode == "negative", operation.label
            except Exception as exn:  # collect them all, so one run shows every problem
                failures.append(f"{operation.label} [{mode}]: {str(exn)[:2000]}")
    assert not failures, "\n\n".join(failures)
    assert statuses[2] >= 10 and statuses[4] >= 50 and statuses[5] == 0, statuses  # it did reach the handlers
