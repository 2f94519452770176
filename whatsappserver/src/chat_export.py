"""WhatsApp "Export chat" files (.txt or .zip, Android and iOS) turned into messages the pipeline can store.

The Cloud API never delivers ordinary group messages, so a dealer's history only arrives this way. The
parser is pure and streaming: `parse_export(lines, ...)` yields `ExportMessage` and `LineIssue` items as
it reads; nothing is ever fatal. Each message gets a stable id (a hash of the chat name, the timestamp as
written, the author, the text and its occurrence index), so importing the same file twice adds nothing,
and a later export of the same chat only adds what is new.

Why our own parser rather than a PyPI one: the maintained option, whatstk, is GPL-3.0, loads the whole
chat into a pandas DataFrame, silently drops what it cannot read, and handles 12-hour clocks poorly;
the others are unmaintained. We need streaming over 100k+ lines, a reason for every skipped line, and
system/media/deleted/edited markers in French and English.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Literal

from src.store.base import InboundMessage

DateOrder = Literal["dmy", "mdy", "ymd"]

LRM = "\u200e"  # iOS marks system lines and attachments with a left-to-right mark
_INVISIBLE = str.maketrans("", "", "\u200e\u200f\ufeff\u202a\u202c")

# One header for every flavour: `12/03/2024, 14:05 - `, `[12/03/2024 14:05:09] `, `3/12/24, 2:05 PM - `,
# `[3/12/24, 2:05:09\u202fPM] `, `12.03.24, 14:05 - `, `2024-03-12 14:05 - `. `\s` matches U+00A0 and U+202F.
_DATE = r"(?P<a>\d{1,4})[./-](?P<b>\d{1,2})[./-](?P<c>\d{2,4})"
_TIME = r"(?P<h>\d{1,2})[:.](?P<m>\d{2})(?:[:.](?P<s>\d{2}))?(?:\s?(?P<ampm>[AaPp]\.?\s?[Mm]\.?))?"


def _header_regex() -> re.Pattern[str]:
    """Python forbids repeated group names, so the bracketed (iOS) and dashed (Android) forms get suffixes."""
    ios_date = _DATE.replace("(?P<a>", "(?P<a1>").replace("(?P<b>", "(?P<b1>").replace("(?P<c>", "(?P<c1>")
    ios_time = (
        _TIME.replace("(?P<h>", "(?P<h1>")
        .replace("(?P<m>", "(?P<m1>")
        .replace("(?P<s>", "(?P<s1>")
        .replace("(?P<ampm>", "(?P<ampm1>")
    )
    return re.compile(
        rf"^[\u200e\u200f\ufeff]*(?:\[{ios_date},?\s{ios_time}\]\s?|{_DATE},?\s{_TIME}\s[-\u2013]\s)(?P<rest>.*)$"
    )


HEADER = _header_regex()

# Android: `IMG-20240312-WA0001.jpg (file attached)`; iOS: `<attached: 00000012-PHOTO-....jpg>`.
_MEDIA_LINE = re.compile(
    r"^(?:<\s*(?:media omitted|m[ée]dias? omis|medien ausgeschlossen)\s*>"
    r"|<\s*(?:attached|pi[èe]ce jointe)\s*:[^>]*>"
    r"|.+\((?:file attached|fichier joint)\)"
    r"|(?:.*\s)?(?:image|photo|video|vid[ée]o|audio|sticker|autocollant|gif|document|contact card|"
    r"carte de contact|carte contact)\s+(?:omitted|omise?s?|absente?s?|exclue?s?|retir[ée]e?)"
    r"|null)$",
    re.IGNORECASE,
)
_MEDIA_KIND = re.compile(
    r"(image|photo|img|jpe?g|png|video|vid[ée]o|mp4|document|pdf|audio|opus|sticker|webp)", re.I
)
_DELETED = re.compile(
    r"^(?:this message was deleted|you deleted this message|ce message a [ée]t[ée] supprim[ée]|"
    r"vous avez supprim[ée] ce message|message supprim[ée])\.?$",
    re.IGNORECASE,
)
_EDITED = re.compile(
    r"\s*<\s*(?:this message was edited|ce message a [ée]t[ée] modifi[ée]|edited)\s*>\s*$", re.I
)
# Phrases that only Android system lines contain before their first ": " (a subject change quotes the subject).
_SYSTEM_IN_AUTHOR = re.compile(
    r"(?:changed the (?:subject|group|settings)|changed this group|a chang[ée]|a modifi[ée]|created group|"
    r"a cr[ée]{2} (?:le )?groupe|\badded\b|a ajout[ée]|\bremoved\b|a retir[ée]|\bleft\b|est parti|"
    r"joined using|a rejoint|security code|code de s[ée]curit[ée]|end-to-end|de bout en bout|"
    r"pinned a message|a [ée]pingl[ée]|deleted this group|disappearing messages|messages [ée]ph[ée]m[èe]res)",
    re.IGNORECASE,
)
_PHONE_AUTHOR = re.compile(r"^\+?[\d\s().\-\u00a0\u202f]{7,}$")
MAX_AUTHOR_LENGTH = 80


@dataclass(slots=True)
class ExportMessage:
    """One message of the export, with its stable id and where it started in the file."""

    id: str
    chat: str
    line_no: int
    written_at: str  # the timestamp exactly as the phone wrote it, part of the stable id
    sent_at: datetime
    author: str
    text: str
    wa_type: str = "text"
    edited: bool = False

    def to_inbound(self) -> InboundMessage:
        """The same record the webhook produces, marked source=chat_export."""
        digits = re.sub(r"\D", "", self.author)
        is_phone = bool(_PHONE_AUTHOR.match(self.author)) and len(digits) >= 7
        return InboundMessage(
            id=self.id,
            source="chat_export",
            chat_id=self.chat,
            sender_id=digits if is_phone else None,
            sender_name=self.author,
            sent_at=self.sent_at,
            wa_type=self.wa_type,
            text=self.text,
            raw={"chat_export": {"chat": self.chat, "line": self.line_no, "edited": self.edited}},
        )


IssueReason = Literal[
    "system message",
    "media without text",
    "deleted message",
    "empty message",
    "line before the first message",
    "impossible date",
    "invalid UTF-8, read as Latin-1",
]


@dataclass(slots=True, frozen=True)
class LineIssue:
    """A line the importer skipped (or repaired, when `kept`), and why. Line numbers only: text is personal."""

    line_no: int
    reason: IssueReason
    lines: int = 1
    kept: bool = False


@dataclass(slots=True)
class FormatGuess:
    """What a first pass over the header lines tells about the file."""

    date_order: DateOrder
    headers: int


def guess_format(lines: Iterable[str | bytes]) -> FormatGuess:
    """Day-first or month-first: a first field above 12 settles it, then a second field above 12; a file
    that never says is read day-first unless it uses a 12-hour clock (US phones)."""
    first_over_12 = second_over_12 = twelve_hour = year_first = False
    headers = 0
    for raw in lines:
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        match = HEADER.match(line)
        if match is None:
            continue
        headers += 1
        a, b, _, _, _, _, ampm = _fields(match)
        if len(a) == 4:
            year_first = True
        elif int(a) > 12:
            first_over_12 = True
        elif int(b) > 12:
            second_over_12 = True
        if ampm:
            twelve_hour = True
    if year_first:
        order: DateOrder = "ymd"
    elif first_over_12:
        order = "dmy"
    elif second_over_12:
        order = "mdy"
    else:
        order = "mdy" if twelve_hour else "dmy"
    return FormatGuess(date_order=order, headers=headers)


def _fields(match: re.Match[str]) -> tuple[str, str, str, str, str, str | None, str | None]:
    group = match.group
    if group("a1") is not None:
        return group("a1"), group("b1"), group("c1"), group("h1"), group("m1"), group("s1"), group("ampm1")
    return group("a"), group("b"), group("c"), group("h"), group("m"), group("s"), group("ampm")


def _timestamp(match: re.Match[str], order: DateOrder) -> datetime | None:
    a, b, c, hour_s, minute_s, second_s, ampm = _fields(match)
    if order == "ymd":
        year, month, day = a, b, c
    elif order == "mdy":
        month, day, year = a, b, c
    else:
        day, month, year = a, b, c
    year_n = int(year)
    if year_n < 100:
        year_n += 2000
    hour = int(hour_s)
    if ampm:
        pm = ampm[0] in "Pp"
        if hour > 12 or hour == 0:
            return None
        hour = (hour % 12) + (12 if pm else 0)
    try:
        return datetime(year_n, int(month), int(day), hour, int(minute_s), int(second_s or 0))
    except ValueError:
        return None


def stable_id(chat: str, written_at: str, author: str, text: str, occurrence: int) -> str:
    """Same file, same ids; a message repeated verbatim in the same minute is told apart by its occurrence."""
    key = "\x1f".join((chat, written_at, author, text, str(occurrence)))
    return "export." + hashlib.blake2b(key.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(slots=True)
class _Pending:
    line_no: int
    written_at: str
    sent_at: datetime
    author: str | None  # None: a system line (no "Author: " part)
    system: bool
    lines: list[str] = field(default_factory=list)


def parse_export(
    lines: Iterable[str | bytes],
    chat: str,
    *,
    date_order: DateOrder = "dmy",
    tz: tzinfo | None = None,
) -> Iterator[ExportMessage | LineIssue]:
    """Yield every message and every line issue, in file order. Times are read in `tz` (naive if None)."""
    occurrences: Counter[tuple[str, str, str]] = Counter()
    pending: _Pending | None = None
    orphan_start = 0
    orphan_count = 0

    for line_no, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                # Old desktop tools re-save exports as Windows-1252; keep the words rather than drop the line.
                line = raw.decode("latin-1")
                yield LineIssue(line_no, "invalid UTF-8, read as Latin-1", kept=True)
        else:
            line = raw
        line = line.rstrip("\r\n")
        if line_no == 1:
            line = line.lstrip("\ufeff")
        match = HEADER.match(line) if line[:1].isdigit() or line[:1] in "[\u200e\u200f\ufeff" else None
        sent_at = _timestamp(match, date_order) if match else None
        if match is not None and sent_at is None:
            yield LineIssue(line_no, "impossible date")
            continue
        if match is None or sent_at is None:
            if pending is not None:
                pending.lines.append(line)
            elif line.strip():
                if orphan_count == 0:
                    orphan_start = line_no
                orphan_count += 1
            continue

        if orphan_count:
            yield LineIssue(orphan_start, "line before the first message", orphan_count)
            orphan_count = 0
        if pending is not None:
            yield _finish(pending, chat, occurrences, tz)
        rest = match.group("rest")
        written_at = line[: match.start("rest")].strip(" \u200e\u200f\ufeff-\u2013[]\t")
        author, first_text, system = _split_author(rest, chat)
        pending = _Pending(line_no, written_at, sent_at, author, system, [first_text])

    if orphan_count:
        yield LineIssue(orphan_start, "line before the first message", orphan_count)
    if pending is not None:
        yield _finish(pending, chat, occurrences, tz)


def _split_author(rest: str, chat: str) -> tuple[str | None, str, bool]:
    """("Author", "text", is_system). Android system lines have no author; iOS ones start with a LRM."""
    cut = rest.find(": ")
    if cut < 0 and rest.endswith(":"):
        cut = len(rest) - 1
    if cut <= 0:
        return None, rest, True
    # iOS prefixes names that are not in the address book with "~ ".
    author = rest[:cut].translate(_INVISIBLE).strip().lstrip("~").strip()
    text = rest[cut + 2 :] if cut + 2 <= len(rest) else ""
    if not author or len(author) > MAX_AUTHOR_LENGTH or _SYSTEM_IN_AUTHOR.search(author) or '"' in author:
        return None, rest, True
    if text.startswith(LRM) and not _MEDIA_LINE.match(text.translate(_INVISIBLE).strip()):
        stripped = _EDITED.sub("", text.translate(_INVISIBLE)).strip()
        if stripped and not _DELETED.match(stripped):
            return author, text, True  # iOS system line, e.g. "GroupName: \u200eAlice added Bob"
    return author, text, False


def _finish(
    pending: _Pending, chat: str, occurrences: Counter[tuple[str, str, str]], tz: tzinfo | None
) -> ExportMessage | LineIssue:
    size = len(pending.lines)
    if pending.system or pending.author is None:
        return LineIssue(pending.line_no, "system message", size)
    lines = [line.translate(_INVISIBLE) for line in pending.lines]
    edited = False
    if lines and _EDITED.search(lines[-1]):
        lines[-1] = _EDITED.sub("", lines[-1])
        edited = True
    wa_type = "text"
    if lines and _MEDIA_LINE.match(lines[0].strip()):
        kind = _MEDIA_KIND.search(lines[0])
        wa_type = _media_type(kind.group(1).lower() if kind else "")
        lines = lines[1:]
    text = "\n".join(lines).strip()
    if not text:
        return LineIssue(
            pending.line_no, "media without text" if wa_type != "text" else "empty message", size
        )
    if _DELETED.match(text):
        return LineIssue(pending.line_no, "deleted message", size)
    if wa_type == "text" and _MEDIA_LINE.match(text):
        return LineIssue(pending.line_no, "media without text", size)
    key = (pending.written_at, pending.author, text)
    occurrence = occurrences[key]
    occurrences[key] += 1
    sent_at = pending.sent_at.replace(tzinfo=tz) if tz is not None else pending.sent_at
    return ExportMessage(
        id=stable_id(chat, pending.written_at, pending.author, text, occurrence),
        chat=chat,
        line_no=pending.line_no,
        written_at=pending.written_at,
        sent_at=sent_at,
        author=pending.author,
        text=text,
        wa_type=wa_type,
        edited=edited,
    )


def _media_type(kind: str) -> str:
    if kind in ("image", "photo", "img", "jpg", "jpeg", "png"):
        return "image"
    if kind in ("video", "vidéo", "video", "mp4"):
        return "video"
    if kind in ("audio", "opus"):
        return "audio"
    if kind in ("sticker", "webp"):
        return "sticker"
    return "document"


# -- files -----------------------------------------------------------------------------------------

_CHAT_NAME_PATTERNS = (
    re.compile(r"^WhatsApp Chat (?:with|-)\s*(?P<name>.+)$", re.I),
    re.compile(r"^Discussion WhatsApp (?:avec|-)\s*(?P<name>.+)$", re.I),
    re.compile(r"^WhatsApp-Chat mit\s*(?P<name>.+)$", re.I),
)


def chat_name_from_path(path: Path) -> str:
    """'WhatsApp Chat with Montres Paris.txt' -> 'Montres Paris'; otherwise the file name without suffix."""
    stem = path.stem
    for pattern in _CHAT_NAME_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group("name").strip()
    return stem


class ExportFileError(ValueError):
    """The file is not a WhatsApp export we can open (the message says what was expected)."""


class ExportFile:
    """A .txt export, or the .zip WhatsApp shares (the chat is `_chat.txt` or the one .txt inside)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise ExportFileError(f"{path}: no such file")
        self._member: str | None = None
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                texts = [info for info in archive.infolist() if info.filename.lower().endswith(".txt")]
                if not texts:
                    raise ExportFileError(f"{path}: the zip holds no .txt chat (expected _chat.txt)")
                named = [info for info in texts if Path(info.filename).name == "_chat.txt"]
                self._member = (named or sorted(texts, key=lambda info: -info.file_size))[0].filename
        elif path.suffix.lower() not in (".txt", ".text", ""):
            raise ExportFileError(
                f"{path}: expected the .txt or .zip file that WhatsApp's 'Export chat' gives"
            )

    def lines(self) -> Iterator[bytes]:
        """The raw lines, read lazily; decoding is the parser's job so a bad byte costs one line only."""
        if self._member is None:
            with self.path.open("rb") as handle:
                yield from handle
            return
        with zipfile.ZipFile(self.path) as archive, archive.open(self._member) as member:
            yield from io.BufferedReader(member)  # type: ignore[arg-type]
