"""Auto-replies and alerts: who is answered, what the reply says, at most once, and end to end on a real server."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from src.config import Settings
from src.replies import (
    Replier,
    ReplyOptions,
    format_reply,
    is_own_message,
    reply_refusal,
    sale_matches_wanted,
)
from src.services import Services, build_services
from src.store.base import InboundMessage, ListingHit, StoredMessage
from src.watch_models import WatchListing
from src.whatsapp.client import ReEngagementRequired
from tests.conftest import TEST_SECRET
from tests.graph_fake import GraphFake
from tests.live_server import LiveServer
from tests.webhook_payloads import (
    BUSINESS_NUMBER,
    PHONE_NUMBER_ID,
    body_and_headers,
    change,
    fake_phone,
    payload,
)
from tests.webhook_payloads import text_message as webhook_text

BUYER = fake_phone(21)
SELLER = fake_phone(22)
OTHER_SELLER = fake_phone(23)


@dataclass
class FakeSender:
    sent: list[dict[str, Any]] = field(default_factory=list)
    read: list[str] = field(default_factory=list)
    fail_with: Exception | None = None

    async def mark_as_read(self, message_id: str) -> bool:
        self.read.append(message_id)
        return True

    async def send_text(
        self, to: str, text: str, *, reply_to: str | None = None, preview_url: bool = False
    ) -> Any:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append({"to": to, "text": text, "reply_to": reply_to})
        return None


_ids = iter(range(1, 10_000))


def inbound(
    text: str,
    sender: str,
    *,
    name: str = "Dealer",
    source: str = "webhook",
    sent_at: datetime | None = None,
    raw: dict[str, Any] | None = None,
) -> InboundMessage:
    message_id = f"wamid.REPLYTEST{next(_ids):05d}"
    return InboundMessage(
        id=message_id,
        source=source,  # type: ignore[arg-type]
        chat_id=sender,
        sender_id=sender,
        sender_name=name,
        sent_at=sent_at or datetime.now(UTC),
        wa_type="text",
        text=text,
        raw=raw if raw is not None else {"from": sender, "id": message_id, "type": "text"},
    )


def stored(message: InboundMessage) -> StoredMessage:
    return StoredMessage(
        id=message.id,
        source=message.source,
        chat_id=message.chat_id,
        sender_id=message.sender_id,
        sender_name=message.sender_name,
        sent_at=message.sent_at,
        received_at=message.sent_at,
        wa_type=message.wa_type,
        text=message.text,
        status="processed",
        raw=message.raw,
    )


@pytest.fixture
async def services(make_settings: Callable[..., Settings]) -> AsyncIterator[Services]:
    built = await build_services(make_settings())
    yield built
    await built.aclose()


def make_replier(
    services: Services, sender: FakeSender, *, auto_reply: bool = True, alerts: bool = True
) -> Replier:
    replier = Replier(
        services,
        sender,
        ReplyOptions(auto_reply=auto_reply, alerts=alerts, own_numbers={BUSINESS_NUMBER, PHONE_NUMBER_ID}),
    )
    services.pipeline.hooks.append(replier.on_processed)
    return replier


async def post(services: Services, *messages: InboundMessage) -> None:
    await services.store.insert_messages(list(messages))
    await services.pipeline.drain()


# -- who is answered ------------------------------------------------------------------------------------


def test_reply_refusals() -> None:
    now = datetime.now(UTC)
    own = {BUSINESS_NUMBER, PHONE_NUMBER_ID}
    assert reply_refusal(stored(inbound("cherche 5711", BUYER)), own, now) is None
    assert reply_refusal(stored(inbound("cherche 5711", BUSINESS_NUMBER)), own, now) == "our own message"
    echo = inbound("cherche 5711", BUYER, raw={"from": BUSINESS_NUMBER, "to": BUYER, "type": "text"})
    assert is_own_message(stored(echo), own)
    exported = inbound("cherche 5711", BUYER, source="chat_export")
    assert reply_refusal(stored(exported), own, now) == "not received on the business number"
    group = inbound("cherche 5711", BUYER, raw={"from": BUYER, "group_id": "G1"})
    assert reply_refusal(stored(group), own, now) == "group message"
    old = inbound("cherche 5711", BUYER, sent_at=now - timedelta(hours=30))
    assert reply_refusal(stored(old), own, now) == "older than the 24-hour service window"


def _hit(**values: Any) -> ListingHit:
    base: dict[str, Any] = {
        "listing_id": 1, "message_id": "m1", "position": 0, "message_type": "sale", "brand": "Rolex",
        "model": "GMT-Master II", "reference": "126710BLRO", "price": 18500.0, "currency": "EUR",
        "price_eur": 18500.0, "condition": None, "year": 2022, "box": True, "papers": True, "confidence": 0.9,
        "text": "Vends GMT 126710BLRO", "created_at": None, "message_text": "Vends GMT 126710BLRO",
        "sender_id": SELLER, "sender_name": "Alice Faux", "chat_id": None,
        "sent_at": datetime(2024, 3, 12, 14, 5, tzinfo=UTC),
    }  # fmt: skip
    base.update(values)
    return ListingHit(**base)


def test_reply_text_lists_brand_model_reference_price_seller_and_date() -> None:
    text = format_reply("cherche 126710BLRO", [_hit(), _hit(price=None, sender_name=None)], alerts_on=True)
    lines = text.splitlines()
    assert lines[0] == "Annonces correspondantes :"
    assert lines[1] == "1. Rolex GMT-Master II 126710BLRO - 18\u202f500 € - Alice Faux, 12/03/2024"
    assert lines[2].startswith("2. Rolex GMT-Master II 126710BLRO - prix sur demande - vendeur inconnu")
    assert "prévenu" in lines[-1]
    english = format_reply("WTB GMT 126710BLRO", [_hit(price=13500.0, currency="USD")], alerts_on=False)
    assert english.splitlines()[1] == "1. Rolex GMT-Master II 126710BLRO - $13,500 - Alice Faux, 2024-03-12"
    assert format_reply("WTB 5711", [], alerts_on=False) == "No matching listing yet."


def test_sale_matches_wanted() -> None:
    gmt = WatchListing(brand="Rolex", model="GMT-Master II", reference="126710BLRO", price_eur=18500.0)
    wanted = _hit(message_type="wanted", price=None, price_eur=None)
    assert sale_matches_wanted(gmt, wanted, None)
    assert sale_matches_wanted(gmt, wanted, 19000.0)
    assert not sale_matches_wanted(gmt, wanted, 17000.0)  # over the stated budget
    assert not sale_matches_wanted(gmt, _hit(reference="126710BLNR"), None)  # the Batman is not the Pepsi
    no_ref = _hit(message_type="wanted", reference=None, price_eur=None)
    assert sale_matches_wanted(gmt, no_ref, 20000.0)  # same brand and model, within budget
    assert not sale_matches_wanted(gmt, _hit(reference=None, model="Submariner"), None)
    unpriced = WatchListing(brand="Rolex", model="GMT-Master II", reference="126710BLRO")
    assert not sale_matches_wanted(unpriced, wanted, 20000.0)  # a budget needs a price to compare


# -- auto-reply in process ------------------------------------------------------------------------------


async def test_wanted_message_gets_one_reply_with_the_matches(services: Services) -> None:
    sender = FakeSender()
    await post(
        services,
        inbound("Vends Rolex GMT-Master II 126710BLRO 2022 full set 18 500 €", SELLER, name="Alice Faux"),
        inbound("Vends Rolex Submariner 126610LN 2023 12 900 €", OTHER_SELLER, name="Bruno Fictif"),
    )
    make_replier(services, sender)
    wanted = inbound("cherche 126710BLRO", BUYER)
    await post(services, wanted)

    assert len(sender.sent) == 1
    reply = sender.sent[0]
    assert reply["to"] == BUYER and reply["reply_to"] == wanted.id
    assert "Rolex GMT-Master II 126710BLRO" in reply["text"] and "Alice Faux" in reply["text"]
    assert "126610LN" not in reply["text"]
    assert sender.read == [wanted.id]

    # an edit re-queues the message: processed again, never answered again
    assert await services.store.apply_edit(wanted.id, "cherche 126710BLRO full set", {"type": "edit"})
    await services.pipeline.drain()
    assert len(sender.sent) == 1


async def test_a_question_gets_a_reply_and_never_counts_as_a_sale(services: Services) -> None:
    sender = FakeSender()
    await post(services, inbound("Vends Rolex Daytona 126500LN neuve 29 000 €", SELLER, name="Alice Faux"))
    make_replier(services, sender)
    await post(services, inbound("Recherche Rolex Daytona", OTHER_SELLER))  # wanted: answered with the sale
    sender.sent.clear()
    question = inbound("Qui vend une Daytona ?", BUYER)
    await post(services, question)
    # one reply to the question, and no "new listing" alert to the Daytona hunter
    assert [(s["to"], s["reply_to"]) for s in sender.sent] == [(BUYER, question.id)]
    assert "Rolex Daytona 126500LN" in sender.sent[0]["text"]


async def test_no_reply_to_own_messages_exports_sales_or_when_off(services: Services) -> None:
    sender = FakeSender()
    make_replier(services, sender, alerts=False)
    await post(
        services,
        inbound("cherche 126710BLRO", BUSINESS_NUMBER),
        inbound("cherche 126710BLRO", BUYER, raw={"from": BUSINESS_NUMBER, "to": BUYER}),
        inbound("cherche 126710BLRO", BUYER, source="chat_export"),
        inbound("Vends Rolex Daytona 126500LN 29 000 €", SELLER),
    )
    assert sender.sent == []

    off = FakeSender()
    services.pipeline.hooks.clear()
    make_replier(services, off, auto_reply=False, alerts=False)
    await post(services, inbound("cherche 126500LN", BUYER))
    assert off.sent == []


async def test_a_failed_send_is_logged_not_retried_forever(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    error = ReEngagementRequired(status_code=400, code=131047, message="Re-engagement message")
    sender = FakeSender(fail_with=error)
    make_replier(services, sender)
    wanted = inbound("cherche 126710BLRO", BUYER)
    with caplog.at_level("INFO"):
        await post(services, wanted)
    assert (await services.store.get_message(wanted.id)).status == "processed"  # type: ignore[union-attr]
    assert "131047" in caplog.text
    assert BUYER not in caplog.text and "126710BLRO" not in caplog.text  # no number, no text at INFO


# -- alerts ---------------------------------------------------------------------------------------------


async def test_a_matching_sale_alerts_the_wanted_author_once_even_after_a_restart(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    first = await build_services(settings)
    sender = FakeSender()
    make_replier(first, sender, auto_reply=False)
    await post(
        first,
        inbound("cherche 126710BLRO budget 20k", BUYER, sent_at=datetime.now(UTC) - timedelta(hours=2)),
        inbound("Recherche Tudor Black Bay 79230N", OTHER_SELLER, source="chat_export"),  # nobody to tell
    )
    over_budget = inbound("Vends Rolex GMT-Master II 126710BLRO 24 000 €", SELLER)
    sale = inbound("Vends Rolex GMT-Master II 126710BLRO 2022 full set 18 500 €", SELLER, name="Alice Faux")
    other = inbound("Vends Tudor Black Bay 79230N 3 100 €", SELLER)
    await post(first, over_budget, sale, other)
    assert [s["to"] for s in sender.sent] == [BUYER]
    assert "126710BLRO" in sender.sent[0]["text"] and "Alice Faux" in sender.sent[0]["text"]
    assert "recherche" in sender.sent[0]["text"]
    await first.aclose()

    # restart: the same sale processed again (an edit re-queues it) sends nothing new
    second = await build_services(settings)
    again = FakeSender()
    make_replier(second, again, auto_reply=False)
    assert await second.store.apply_edit(sale.id, sale.text + " !", {"type": "edit"})
    await second.pipeline.drain()
    await second.aclose()
    assert again.sent == []


async def test_a_sale_older_than_the_wanted_message_does_not_alert(services: Services) -> None:
    sender = FakeSender()
    make_replier(services, sender, auto_reply=False)
    await post(services, inbound("cherche 126710BLRO", BUYER))
    await post(
        services,
        inbound(
            "Vends Rolex GMT-Master II 126710BLRO 18 500 €",
            SELLER,
            sent_at=datetime.now(UTC) - timedelta(hours=3),
        ),
        inbound("Vends Rolex GMT-Master II 126710BLRO 18 000 €", BUYER),  # the author's own sale
    )
    assert sender.sent == []


# -- end to end: a real server, a fake Graph API on loopback ------------------------------------------------


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _processed(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(
            conn.execute("SELECT count(*) FROM whatsapp_messages WHERE status = 'processed'").fetchone()[0]
        )
    finally:
        conn.close()


@pytest.mark.slow
def test_wanted_message_to_the_webhook_produces_exactly_one_reply_request(tmp_path: Path) -> None:
    db = tmp_path / "e2e.sqlite3"
    with GraphFake() as graph:
        env = {
            "SQLITE_PATH": str(db),
            "WHATSAPP_APP_SECRET": TEST_SECRET,
            "WORKER_POLL_SECONDS": "0.05",
            "AUTO_REPLY": "true",
            "ALERTS": "false",
            "WHATSAPP_ACCESS_TOKEN": "EAAtest-token",
            "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
            "WHATSAPP_BUSINESS_NUMBER": BUSINESS_NUMBER,
            "GRAPH_API_BASE_URL": graph.url,
        }
        with LiveServer(env=env, log_path=tmp_path / "server.log") as server:
            sales = payload(
                [
                    change(
                        [
                            webhook_text(
                                "Vends Rolex GMT-Master II 126710BLRO 2022 full set 18 500 €", sender=SELLER
                            ),
                            webhook_text(
                                "Vends Omega Speedmaster 310.30.42.50.01.001 6 200 €", sender=OTHER_SELLER
                            ),
                        ],
                        names={SELLER: "Alice Faux", OTHER_SELLER: "Bruno Fictif"},
                    )
                ]
            )
            body, headers = body_and_headers(sales, TEST_SECRET)
            assert httpx.post(server.url + "/webhook", content=body, headers=headers).status_code == 200
            _wait(lambda: _processed(db) == 2)
            time.sleep(0.3)
            assert graph.sends() == []  # sales get no reply

            wanted = webhook_text("cherche 126710BLRO", sender=BUYER)
            body, headers = body_and_headers(payload([change([wanted])]), TEST_SECRET)
            assert httpx.post(server.url + "/webhook", content=body, headers=headers).status_code == 200
            _wait(lambda: len(graph.sends()) >= 1 and _processed(db) == 3)
            # Meta redelivers the same POST: stored once, answered once
            assert httpx.post(server.url + "/webhook", content=body, headers=headers).status_code == 200
            status = payload([{"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": [
                {"id": "wamid.OUT", "status": "delivered", "timestamp": "1", "recipient_id": BUYER}]}}])  # fmt: skip
            body, headers = body_and_headers(status, TEST_SECRET)
            assert httpx.post(server.url + "/webhook", content=body, headers=headers).status_code == 200
            time.sleep(1.0)

        sends = graph.sends()
        assert len(sends) == 1
        request = sends[0]
        assert request["path"] == f"/v21.0/{PHONE_NUMBER_ID}/messages"
        assert request["authorization"] == "Bearer EAAtest-token"
        assert request["json"]["to"] == BUYER
        assert request["json"]["context"] == {"message_id": wanted["id"]}
        text = request["json"]["text"]["body"]
        assert "Rolex GMT-Master II 126710BLRO" in text and "Alice Faux" in text and "18\u202f500 €" in text
        assert "Speedmaster" not in text
        assert [r["json"]["message_id"] for r in graph.reads()] == [wanted["id"]]
        log = (tmp_path / "server.log").read_text()
        assert BUYER not in log and "cherche" not in log


# -- start-up wiring ------------------------------------------------------------------------------------


def test_start_up_wires_the_client_and_hook_only_when_asked(make_settings: Callable[..., Settings]) -> None:
    from fastapi.testclient import TestClient

    from app import create_app
    from src.whatsapp.client import WhatsAppClient

    with TestClient(create_app(make_settings())) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        assert "whatsapp_client" not in services.extras and services.pipeline.hooks == []
    settings = make_settings(AUTO_REPLY=True, WHATSAPP_ACCESS_TOKEN="EAAtest", WHATSAPP_PHONE_NUMBER_ID="1")
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        assert isinstance(services.extras["whatsapp_client"], WhatsAppClient)
        assert services.extras["replier"].on_processed in services.pipeline.hooks


def test_replies_refuse_to_start_without_credentials(make_settings: Callable[..., Settings]) -> None:
    from fastapi.testclient import TestClient

    from app import create_app
    from src.whatsapp.client import WhatsAppConfigError

    app = create_app(make_settings(ALERTS=True, WHATSAPP_ACCESS_TOKEN="", WHATSAPP_PHONE_NUMBER_ID="1"))
    with pytest.raises(WhatsAppConfigError, match="WHATSAPP_ACCESS_TOKEN"), TestClient(app):
        pass
