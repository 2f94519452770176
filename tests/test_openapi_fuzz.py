"""schemathesis over the OpenAPI schema of every public endpoint of a real server: no input gives a 5xx.

The webhook is not in the schema (Meta's endpoint, kept out of the docs); tests/test_hostile_input.py
fuzzes it with hypothesis instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from app import create_app
from src.config import Settings
from tests.conftest import TEST_SECRET
from tests.live_server import LiveServer
from tests.webhook_payloads import body_and_headers, change, fake_phone, payload, text_message

API_KEY = "fuzz-search-key"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    env = {
        "SQLITE_PATH": str(tmp / "fuzz.sqlite3"),
        "WHATSAPP_APP_SECRET": TEST_SECRET,
        "SEARCH_API_KEY": API_KEY,
        "WORKER_POLL_SECONDS": "0.05",
    }
    with LiveServer(env=env, log_path=tmp / "server.log") as server:
        texts = [
            "Vends Rolex Submariner 116610LN de 2018, excellent état, 8200€",
            "WTS Patek 5711/1A-010 2019 full set $148,500 + label",
            "WTB Daytona 116500LN white, budget 28k",
            "Qui a une AP 15500ST bleue ?",
        ]
        messages = [text_message(t, sender=fake_phone(i)) for i, t in enumerate(texts)]
        body, headers = body_and_headers(payload([change(messages)]), TEST_SECRET)
        assert httpx.post(server.url + "/webhook", content=body, headers=headers).status_code == 200
        yield server


def _operations() -> list[schemathesis.APIOperation]:
    """Every operation of the app's OpenAPI schema (built without a server: it is static)."""
    spec = create_app(Settings(_env_file=None, SEARCH_API_KEY=API_KEY)).openapi()  # type: ignore[call-arg]
    return [result.ok() for result in schemathesis.openapi.from_dict(spec).get_all_operations()]


OPERATIONS = _operations()
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def test_the_schema_lists_every_public_endpoint(live_api: LiveServer) -> None:
    paths = set(httpx.get(live_api.url + "/openapi.json").json()["paths"])
    assert {"/health", "/search", "/ask", "/market/{reference}"} <= paths
    assert "/webhook" not in paths


# Negative cases (invalid inputs) only exist for operations that take inputs.
CASES = [
    pytest.param(op, mode, id=f"{op.label}-{mode.value}")
    for op in OPERATIONS
    for mode in MODES
    if mode is GenerationMode.POSITIVE or op.path != "/health"
]


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_no_input_gives_a_server_error(
    live_api: LiveServer, operation: schemathesis.APIOperation, mode: GenerationMode
) -> None:
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(generation_mode=mode))
        response = case.call(base_url=live_api.url, headers={"X-API-Key": API_KEY}, timeout=30)
        assert response.status_code < 500, (case.path, case.query, case.body, response.text[:300])

    run()


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_without_the_key_only_health_answers(
    live_api: LiveServer, operation: schemathesis.APIOperation
) -> None:
    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy())
        response = case.call(base_url=live_api.url, timeout=30)
        if operation.path == "/health":
            assert response.status_code in (200, 503)
        else:
            assert response.status_code in (401, 422), response.text[:300]

    run()
