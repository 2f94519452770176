"""GET /search, POST /ask, GET /market/{reference}: auth, parameters over the query, bad input, OpenAPI, and
one path through the real extractor and worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import create_app
from src.config import ConfigurationError, Settings
from src.embedding_processor import LocalEmbedder
from src.store.base import InboundMessage
from tests.test_rag_searcher import CORPUS, seed

KEY = "test-search-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture
def api(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """The app with a search key, the worker off, and the test corpus written to its store."""
    settings = make_settings(SEARCH_API_KEY=KEY, WORKER_ENABLED=False)
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        client.portal.call(seed, services.store, LocalEmbedder(settings.EMBEDDING_DIMENSIONS), CORPUS)  # type: ignore[union-attr]
        yield client


def _ids(body: dict[str, Any]) -> list[str]:
    return [r["message"]["id"] for r in body["results"]]


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("get", "/search", {"params": {"q": "Daytona"}}),
        ("post", "/ask", {"json": {"question": "Daytona ?"}}),
        ("get", "/market/116500LN", {}),
    ],
)
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
def test_every_search_endpoint_needs_the_api_key(
    api: TestClient, method: str, path: str, kwargs: dict[str, Any], headers: dict[str, str]
) -> None:
    response = getattr(api, method)(path, headers=headers, **kwargs)
    assert response.status_code == 401
    assert "X-API-Key" in response.json()["detail"]
    assert getattr(api, method)(path, headers=AUTH, **kwargs).status_code == 200


def test_production_refuses_to_start_without_a_search_key(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigurationError, match="SEARCH_API_KEY"):
        make_settings(APP_ENV="production", SEARCH_API_KEY="")


def test_search_returns_listings_with_their_message_score_and_why(api: TestClient) -> None:
    response = api.get("/search", params={"q": "qui vend une Daytona 116500LN blanche ?"}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["filters"]["message_type"] == "sale" and body["filters"]["reference"] == "116500LN"
    assert body["keywords"] == ["blanche"]
    assert _ids(body) == ["m-daytona-white", "m-daytona-black"] and body["count"] == 2
    top = body["results"][0]
    assert top["reference"] == "116500LN" and top["price_eur"] == 27_500 and top["exact_reference"]
    assert set(top["message"]) == {"id", "text", "sender_name", "chat_id", "sent_at"}
    assert top["message"]["sender_name"] == "Dealer A" and top["score"] > 0 and top["why"]
    assert "sender_id" not in top and "sender_id" not in top["message"]  # no phone numbers in answers


def test_explicit_parameters_override_the_query(api: TestClient) -> None:
    body = api.get(
        "/search",
        params={"q": "qui cherche une Submariner ?", "type": "sale", "max_price_eur": 8000},
        headers=AUTH,
    ).json()
    assert _ids(body) == ["m-sub-naked"]
    assert body["filters"]["message_type"] == "sale" and body["filters"]["max_price_eur"] == 8000
    body = api.get(
        "/search", params={"q": "montre", "brand": "Patek Philippe", "limit": 1}, headers=AUTH
    ).json()
    assert body["count"] == 1 and body["results"][0]["brand"] == "Patek Philippe"
    body = api.get(
        "/search", params={"q": "Submariner", "full_set": True, "max_price_eur": 10_000}, headers=AUTH
    )
    assert set(_ids(body.json())) == {"m-sub-cheap", "m-sub-usd", "m-sub-wtb"}


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "x" * 501},
        {"q": "Daytona", "limit": 0},
        {"q": "Daytona", "limit": 51},
        {"q": "Daytona", "type": "gift"},
        {"q": "Daytona", "max_price_eur": -1},
        {"q": "Daytona", "min_price_eur": 10, "max_price_eur": 5},
        {"q": "Daytona", "condition": "broken"},
        {"q": "Daytona", "reference": "--"},
    ],
)
def test_bad_search_parameters_are_a_422_with_a_reason(api: TestClient, params: dict[str, Any]) -> None:
    response = api.get("/search", params=params, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_ask_without_an_openai_key_answers_with_a_summary(api: TestClient) -> None:
    body = api.post("/ask", json={"question": "prix moyen d'une 126610LN ?"}, headers=AUTH).json()
    assert body["mode"] == "offline" and body["model"] is None
    assert set(body["citations"]) <= {r["message"]["id"] for r in body["results"]}
    assert body["citations"] and "median" in body["answer"]
    assert body["market"]["reference"] == "126610LN" and body["market"]["overall"]["count"] == 2


@pytest.mark.parametrize(
    "payload", [{}, {"question": ""}, {"question": "   "}, {"q": "Daytona"}, ["Daytona"]]
)
def test_bad_ask_body_is_a_422(api: TestClient, payload: Any) -> None:
    response = api.post("/ask", json=payload, headers=AUTH)
    assert response.status_code == 422


def test_ask_with_a_body_that_is_not_json_is_a_4xx(api: TestClient) -> None:
    response = api.post("/ask", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422


def test_market(api: TestClient) -> None:
    body = api.get("/market/126610LN", params={"days": 90}, headers=AUTH).json()
    assert body["overall"] == {
        "count": 2,
        "priced": 2,
        "min_eur": 12_600,
        "median_eur": 13_000,
        "max_eur": 13_400,
    }
    assert set(body["by_condition"]) == {"new", "excellent"}
    assert set(body["by_box_papers"]) == {"full_set", "papers_only"}
    assert [x["message"]["id"] for x in body["latest"]] == ["m-sub-dear", "m-sub-dear-2"]
    assert api.get("/market/126610-LN", params={"days": 365}, headers=AUTH).json()["overall"]["count"] == 3
    empty = api.get("/market/999999", headers=AUTH).json()
    assert empty["overall"]["count"] == 0 and empty["overall"]["median_eur"] is None


@pytest.mark.parametrize(("path", "params"), [("/market/-.-", {}), ("/market/5711", {"days": 0})])
def test_bad_market_input_is_a_422(api: TestClient, path: str, params: dict[str, Any]) -> None:
    assert api.get(path, params=params, headers=AUTH).status_code == 422


def test_openapi_lists_the_search_endpoints_with_examples_and_the_key(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    assert {"/search", "/ask", "/market/{reference}"} <= set(schema["paths"])
    search = schema["paths"]["/search"]["get"]
    q = next(p for p in search["parameters"] if p["name"] == "q")
    assert q["examples"] and search["security"]
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    models = schema["components"]["schemas"]
    assert models["SearchResultsPublic"]["examples"] and models["AskRequest"]["examples"]
    assert models["MarketStatsPublic"]["examples"]


def test_search_over_messages_read_by_the_real_extractor_and_worker(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(SEARCH_API_KEY=KEY, WORKER_ENABLED=False)
    texts = {
        "w-1": "Dispo Pepsi 126710BLRO oyster, 2024, neuve, full set, 19 900€",
        "w-2": "Vends Rolex Submariner 114060 de 2016, excellent état, boîte et papiers, 8200€",
        "w-3": "WTB 126710BLRO jubilee full set",
    }
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        messages = [
            InboundMessage(
                id=mid,
                source="webhook",
                chat_id="g",
                sender_id=None,
                sender_name=f"Dealer {mid}",
                sent_at=datetime.now(UTC),
                wa_type="text",
                text=text,
            )
            for mid, text in texts.items()
        ]
        client.portal.call(services.store.insert_messages, messages)  # type: ignore[union-attr]
        client.portal.call(services.pipeline.drain, 30)  # type: ignore[union-attr]
        body = client.get("/search", params={"q": "qui vend une Pepsi ?"}, headers=AUTH).json()
        assert _ids(body) == ["w-1"]
        body = client.get(
            "/search", params={"q": "Submariner sous 10k boîte et papiers"}, headers=AUTH
        ).json()
        assert _ids(body) == ["w-2"]
        body = client.get("/search", params={"q": "qui cherche une 126710BLRO ?"}, headers=AUTH).json()
        assert _ids(body) == ["w-3"]
