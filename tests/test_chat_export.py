"""WhatsApp chat exports: every phone format, the markers, stable ids, and `import-chat` through the pipeline."""

from __future__ import annotations

import sqlite3
import zipfile
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from src.chat_export import (
    ExportFile,
    ExportFileError,
    ExportMessage,
    LineIssue,
    chat_name_from_path,
    guess_format,
    parse_export,
)
from src.config import Settings

DATA = Path(__file__).parent / "data" / "chat_exports"


def _parse(name: str, chat: str = "Test chat") -> tuple[list[ExportMessage], list[LineIssue]]:
    export = ExportFile(DATA / name)
    order = guess_format(export.lines()).date_order
    items = list(parse_export(export.lines(), chat, date_order=order))
    return (
        [m for m in items if isinstance(m, ExportMessage)],
        [i for i in items if isinstance(i, LineIssue)],
    )


def _reasons(issues: list[LineIssue]) -> Counter[str]:
    return Counter(issue.reason for issue in issues)


# -- formats ----------------------------------------------------------------------------------------


def test_android_french_day_first_24h() -> None:
    messages, issues = _parse("android_fr.txt")
    assert [(m.line_no, m.author) for m in messages][:3] == [
        (4, "Alice Faux"),
        (5, "+1 555 0101"),
        (6, "Bruno Fictif"),
    ]
    assert messages[0].sent_at == datetime(2024, 3, 12, 14, 5)
    assert messages[0].text == "Vends Rolex GMT-Master II 126710BLRO, 2022, full set, 18 500 €"
    # multi-line stock list, blank line included, kept as one message
    assert messages[2].text.splitlines() == [
        "Stock du jour :",
        "Omega Speedmaster 310.30.42.50.01.001 - 6 200 €",
        "Tudor Black Bay 79230N - 3 100 €",
        "",
        "Cartier Santos WSSA0018 - 6 900 €",
    ]
    # attachment line with a caption: the caption is the message, typed as an image
    captioned = next(m for m in messages if m.line_no == 12)
    assert (captioned.wa_type, captioned.text) == ("image", "Patek 5711/1A dispo, prix sur demande")
    edited = next(m for m in messages if m.line_no == 15)
    assert edited.edited and edited.text == "Vends Submariner 124060 10 900 €"
    # encryption notice, group created with a ":" in its quoted name, member added, subject changed
    assert _reasons(issues) == {"system message": 4, "media without text": 1, "deleted message": 1}


def test_ios_french_brackets_seconds_and_left_to_right_marks() -> None:
    messages, issues = _parse("ios_fr.txt")
    assert [m.author for m in messages] == ["Alice Faux", "Bruno Fictif", "Carla"]  # "~ Carla": not a contact
    assert messages[0].sent_at == datetime(2024, 3, 12, 14, 5, 9)
    assert messages[1].text == "Qui a une Nautilus 5711 ?\nBudget 120k"
    assert messages[2].edited and messages[2].text == "Recherche AP Royal Oak 15500ST"
    assert _reasons(issues) == {"system message": 2, "media without text": 2, "deleted message": 1}


def test_android_us_month_first_12h_with_narrow_no_break_spaces() -> None:
    assert guess_format((DATA / "android_us.txt").read_text("utf-8").splitlines()).date_order == "mdy"
    messages, issues = _parse("android_us.txt")
    assert [(m.author, m.sent_at) for m in messages] == [
        ("Dana Sample", datetime(2024, 3, 12, 14, 5)),
        ("+1 555 0102", datetime(2024, 3, 12, 14, 6)),
        ("Evan Example", datetime(2024, 3, 13, 0, 31)),  # 12:31 AM is just after midnight
    ]
    assert messages[2].edited and messages[2].text.endswith("Need box and papers")
    # <Media omitted>, and "null" (a view-once photo) are media without text
    assert _reasons(issues) == {"system message": 2, "media without text": 2, "deleted message": 1}


def test_android_uk_english_markers() -> None:
    messages, issues = _parse("android_uk.txt")
    assert [m.author for m in messages] == ["Fiona Test", "+1 555 0103", "George Placeholder"]
    assert messages[0].sent_at == datetime(2024, 3, 12, 14, 5)
    assert messages[2].text == "Anyone got a\nmulti-line question about a\nGrand Seiko SBGA211?"
    assert messages[2].edited
    # encryption notice, joined via link, "You deleted this message" (no author: a system line)
    assert _reasons(issues) == {"system message": 3, "media without text": 1}


def test_ios_us_zip_export(tmp_path: Path) -> None:
    archive = tmp_path / "WhatsApp Chat - Watch Traders.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(DATA / "ios_us.txt", "_chat.txt")
        zf.writestr("00000020-PHOTO-2024-03-14-08-00-00.jpg", b"\xff\xd8not really a jpeg")
    assert chat_name_from_path(archive) == "Watch Traders"
    export = ExportFile(archive)
    guess = guess_format(export.lines())
    assert (guess.date_order, guess.headers) == ("mdy", 8)
    items = list(parse_export(export.lines(), "Watch Traders", date_order=guess.date_order))
    messages = [m for m in items if isinstance(m, ExportMessage)]
    assert [(m.author, m.sent_at) for m in messages] == [
        ("Hana Dummy", datetime(2024, 3, 12, 14, 5, 9)),
        ("Ian Mock", datetime(2024, 3, 12, 14, 7)),
        ("Hana Dummy", datetime(2024, 3, 13, 23, 59, 59)),
    ]
    assert messages[1].text == "WTB Rolex Explorer 224270\nbudget $9k"
    assert messages[2].text == "Price drop on the 15510ST: $40,500" and messages[2].edited
    assert _reasons([i for i in items if isinstance(i, LineIssue)]) == {
        "system message": 2,
        "media without text": 2,
        "deleted message": 1,
    }


@pytest.mark.parametrize(
    ("line", "order", "expected"),
    [
        ("12/03/2024, 14:05 - Nom: salut", "dmy", datetime(2024, 3, 12, 14, 5)),
        ("[12/03/2024 14:05:09] Nom: salut", "dmy", datetime(2024, 3, 12, 14, 5, 9)),
        ("[12/03/2024, 14:05:09] Name: hi", "dmy", datetime(2024, 3, 12, 14, 5, 9)),
        ("3/12/24, 2:05 PM - Name: hi", "mdy", datetime(2024, 3, 12, 14, 5)),
        ("3/12/24, 2:05\u202fPM - Name: hi", "mdy", datetime(2024, 3, 12, 14, 5)),
        ("[3/12/24, 12:05:09\u202fAM] Name: hi", "mdy", datetime(2024, 3, 12, 0, 5, 9)),
        ("12/03/2024,\u00a014:05 - Nom: salut", "dmy", datetime(2024, 3, 12, 14, 5)),
        ("12.03.24, 14:05 - Name: hallo", "dmy", datetime(2024, 3, 12, 14, 5)),
        ("2024-03-12 14:05 - Name: hi", "ymd", datetime(2024, 3, 12, 14, 5)),
    ],
)
def test_every_header_flavour(line: str, order: str, expected: datetime) -> None:
    assert guess_format([line]).date_order == order
    (message,) = parse_export([line], "c", date_order=order)  # type: ignore[arg-type]
    assert isinstance(message, ExportMessage)
    assert message.sent_at == expected
    assert message.text in ("salut", "hi", "hallo")


def test_date_order_is_read_from_the_whole_file() -> None:
    # the first lines are ambiguous; a later "3/25" settles month-first even on a 24-hour clock
    lines = ["3/4/24, 14:05 - A: one", "3/5/24, 14:06 - B: two", "3/25/24, 09:00 - A: three"]
    assert guess_format(lines).date_order == "mdy"
    assert guess_format(["13/4/24, 14:05 - A: x"]).date_order == "dmy"
    assert guess_format(["3/4/24, 2:05 PM - A: x"]).date_order == "mdy"  # ambiguous + 12h: a US phone
    assert guess_format(["3/4/24, 14:05 - A: x"]).date_order == "dmy"  # ambiguous + 24h: Europe


def test_unreadable_lines_are_reported_never_fatal() -> None:
    messages, issues = _parse("broken_lines.txt")
    assert [m.line_no for m in messages] == [2, 4, 5]
    assert messages[1].text == "café ÿ cassé"  # Latin-1 bytes in a UTF-8 file: read, and reported
    assert [(i.line_no, i.reason, i.kept) for i in issues] == [
        (1, "line before the first message", False),
        (3, "impossible date", False),  # 31 February
        (4, "invalid UTF-8, read as Latin-1", True),
    ]


def test_a_message_starting_with_a_colon_free_line_is_not_mistaken_for_a_system_line() -> None:
    (message,) = parse_export(["12/03/2024, 14:05 - Alice Faux: Prix: 8 000 € ferme"], "c")
    assert isinstance(message, ExportMessage)
    assert (message.author, message.text) == ("Alice Faux", "Prix: 8 000 € ferme")


# -- ids --------------------------------------------------------------------------------------------


def test_ids_are_stable_and_repeated_messages_stay_distinct() -> None:
    first, _ = _parse("android_fr.txt")
    second, _ = _parse("android_fr.txt")
    assert [m.id for m in first] == [m.id for m in second]
    oks = [m for m in first if m.text == "ok"]
    assert len(oks) == 2 and oks[0].id != oks[1].id  # same minute, same author, same text
    assert len({m.id for m in first}) == len(first)
    other_chat, _ = _parse("android_fr.txt", chat="Another chat")
    assert not {m.id for m in first} & {m.id for m in other_chat}


def test_a_later_export_of_the_same_chat_keeps_the_earlier_ids() -> None:
    lines = (DATA / "android_fr.txt").read_text("utf-8").splitlines()
    early = [m.id for m in parse_export(lines[:10], "c") if isinstance(m, ExportMessage)]
    full = [m.id for m in parse_export(lines, "c") if isinstance(m, ExportMessage)]
    assert early == full[: len(early)]


def test_to_inbound_marks_the_source_and_keeps_phone_authors_as_ids() -> None:
    messages, _ = _parse("android_fr.txt")
    by_name, by_phone = messages[0].to_inbound(), messages[1].to_inbound()
    assert by_name.source == "chat_export" and by_name.chat_id == "Test chat"
    assert (by_name.sender_id, by_name.sender_name) == (None, "Alice Faux")
    assert (by_phone.sender_id, by_phone.sender_name) == ("15550101", "+1 555 0101")


def test_timezone_is_applied_without_changing_ids() -> None:
    lines = ["12/07/2024, 14:05 - A: summer"]
    (paris,) = parse_export(lines, "c", tz=ZoneInfo("Europe/Paris"))
    (naive,) = parse_export(lines, "c")
    assert isinstance(paris, ExportMessage) and isinstance(naive, ExportMessage)
    assert paris.sent_at.astimezone(UTC) == datetime(2024, 7, 12, 12, 5, tzinfo=UTC)
    assert paris.id == naive.id


def test_files_that_are_not_exports_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ExportFileError, match="no such file"):
        ExportFile(tmp_path / "missing.txt")
    empty_zip = tmp_path / "photos.zip"
    with zipfile.ZipFile(empty_zip, "w") as zf:
        zf.writestr("a.jpg", b"x")
    with pytest.raises(ExportFileError, match=r"_chat\.txt"):
        ExportFile(empty_zip)
    pdf = tmp_path / "chat.pdf"
    pdf.write_bytes(b"%PDF")
    with pytest.raises(ExportFileError, match="Export chat"):
        ExportFile(pdf)


def test_chat_names_from_file_names() -> None:
    assert chat_name_from_path(Path("WhatsApp Chat with Montres Paris.txt")) == "Montres Paris"
    assert chat_name_from_path(Path("Discussion WhatsApp avec Montres Paris.txt")) == "Montres Paris"
    assert chat_name_from_path(Path("_chat.txt")) == "_chat"


# -- import through the pipeline ----------------------------------------------------------------------


def _db_rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_import_stores_processes_and_reimport_adds_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from src.commands.import_chat import import_export
    from src.services import build_services

    settings = make_settings()
    services = await build_services(settings)
    progress: list[tuple[int, int]] = []
    try:
        summary = await import_export(
            services,
            DATA / "android_fr.txt",
            chat="Montres Paris",
            tz=UTC,
            chunk_size=3,
            on_progress=lambda done, total: progress.append((done, total)),
        )
        again = await import_export(services, DATA / "android_fr.txt", chat="Montres Paris", tz=UTC)
    finally:
        await services.aclose()

    assert (summary.messages, summary.new, summary.already_imported) == (7, 7, 0)
    assert summary.processed == 7 and summary.failed == 0
    assert summary.listings_by_type["sale"] >= 4  # GMT, the three lines of the stock list, Submariner...
    assert summary.listings_by_type["wanted"] >= 1
    assert {reason: b.entries for reason, b in summary.skipped.items()} == {
        "system message": 4,
        "media without text": 1,
        "deleted message": 1,
    }
    assert summary.skipped["system message"].examples == [1, 2, 3, 18]
    assert progress[-1] == (13, 13)

    assert (again.messages, again.new, again.already_imported) == (7, 0, 7)
    assert sum(again.listings_by_type.values()) == 0

    db = settings.SQLITE_PATH
    rows = _db_rows(db, "SELECT source, status, chat_id, sent_at FROM whatsapp_messages ORDER BY sent_at")
    assert len(rows) == 7
    assert {r[0] for r in rows} == {"chat_export"} and {r[1] for r in rows} == {"processed"}
    assert rows[0][2] == "Montres Paris" and rows[0][3].startswith("2024-03-12T14:05:00")
    refs = {r[0] for r in _db_rows(db, "SELECT reference FROM watch_listings")}
    assert "126710BLRO" in refs


def test_cli_import_chat_prints_a_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from src.cli import cli

    for key in ("OPENAI_API_KEY", "DATABASE_URL", "SUPABASE_URL"):
        monkeypatch.setenv(key, "")
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "cli.sqlite3"))
    monkeypatch.chdir(tmp_path)  # no .env
    runner = CliRunner()
    result = runner.invoke(
        cli, ["import-chat", str(DATA / "android_uk.txt"), "--chat", "UK", "--timezone", "UTC"]
    )
    assert result.exit_code == 0, result.output
    assert "messages" in result.output and "skipped" in result.output
    assert "system message" in result.output and "media without text" in result.output
    result = runner.invoke(cli, ["import-chat", str(DATA / "android_uk.txt"), "--chat", "UK"])
    assert result.exit_code == 0
    assert "already imported" in result.output
    bad = runner.invoke(cli, ["import-chat", str(tmp_path / "nope.txt")])
    assert bad.exit_code == 2
