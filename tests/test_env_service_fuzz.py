"""Property-based fuzz of the environment service from its own OpenAPI document (schemathesis).

Every operation gets schema-valid and schema-violating requests (bodies, the Idempotency-Key header);
every response must be documented for its operation, match its documented schema and never be a 5xx.
The example counts keep the whole fuzz at about a minute on a quiet two-core machine.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import schemathesis

from browser_control.client import IDEMPOTENCY_HEADER
from tests.conftest import ServiceProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EXAMPLES_PER_MODE = 40


@pytest.fixture(scope="module")
def fuzzed_service(chromium: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        "--workers", "1", "--max-sessions", "64",
        log_path=tmp_path_factory.mktemp("fuzz") / "serve-env.log", chromium=chromium,
    )  # fmt: skip
    try:
        service.wait_healthy(timeout_s=120)
        yield service
    finally:
        service.stop()


@pytest.mark.timeout(900)
def test_fuzzing_the_openapi_document_finds_no_server_error_and_no_schema_violation(
    fuzzed_service: ServiceProcess,
) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(fuzzed_service.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/health", "/tasks", "/reset", "/step", "/close"}
    failures: list[str] = []
    calls: list[str] = []

    def fuzz_one(operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
        where = f"{operation.method.upper()} {operation.path} [{mode.value}]"

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_MODE,
            deadline=None,
            database=None,
            derandomize=True,  # the same cases on every run: a failure can be reproduced
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            calls.append(where)
            if mode is GenerationMode.POSITIVE and case.headers and IDEMPOTENCY_HEADER in case.headers:
                # Hypothesis repeats generated values across cases, and a key sent again with another body
                # is rightly refused (422 idempotency_key_reused, tested on its own); a client sends a new
                # random key per call, so the fuzz does too.
                case.headers[IDEMPOTENCY_HEADER] = uuid.uuid4().hex
            try:
                case.call_and_validate(base_url=fuzzed_service.url, timeout=120)
            except Exception as exc:  # collect, so one run reports every operation's problems
                failures.append(f"{where}: {exc}"[:1500])

        fuzz()

    for operation in operations:
        fuzz_one(operation, GenerationMode.POSITIVE)
        # GET /health and /tasks take no input: there is nothing to make invalid.
        if operation.body or operation.headers:
            fuzz_one(operation, GenerationMode.NEGATIVE)
    assert len(calls) >= 5 * 10, len(calls)
    assert not failures, "\n\n".join(failures[:10])
    log = fuzzed_service.log()
    assert '"status": 500' not in log, log
