"""Turn one WhatsApp message from the watch trade into the facts a trader cares about (pure, no I/O).

Main entry point:
    extract_watch_info(text, rates=None) -> WatchInfo

Small pure helpers, also used by search for query understanding:
    find_brand(text) -> str | None                      first brand named or implied (alias, nickname, reference)
    find_brands(text) -> list[str]                      every brand named or implied, in order, without repeats
    find_references(text) -> list[tuple[str, str | None]]   (reference as written, upper-cased; brand or None)
    parse_prices(text) -> list[tuple[float, str | None]]    (amount, ISO currency or None when unsaid)
    canonical_model(text, brand=None) -> str | None     canonical model family named in the text ("sub" -> Submariner)
    normalize_reference(ref) -> str                     upper case without spaces, dots, dashes and slashes
    reference_info(ref) -> tuple[str | None, str | None]    (brand, family) the catalogue gives a reference
    classify_message(text) -> MessageType               sale | wanted | question | trade | other

Everything is regular expressions over a case- and accent-folded copy of the text (same length, so positions
map back to the original) plus the catalogue in src/catalog; rapidfuzz only rescues misspelt brand and family
names that failed the exact alias lookup.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Mapping, Sequence
from functools import lru_cache
from operator import attrgetter
from typing import Any

from rapidfuzz import fuzz, process

from src.catalog import CATALOG
from src.fx import to_eur
from src.watch_models import Condition, MessageType, Movement, WatchInfo, WatchListing

__all__ = [
    "Condition",
    "MessageType",
    "Movement",
    "WatchInfo",
    "WatchListing",
    "canonical_model",
    "classify_message",
    "extract_watch_info",
    "find_brand",
    "find_brands",
    "find_references",
    "normalize_reference",
    "parse_prices",
    "reference_info",
]

MAX_TEXT_CHARS = 20_000
_START = attrgetter(
    "start"
)  # sort key of spans found in the text (C, not a lambda per item)  # longer input is cut: no real message is longer, and time stays bounded


# ---------------------------------------------------------------- fast scanning
# Python's regex engine tries a pattern at every position of the text; for long alternations led by
# lookbehinds (conditions, box and papers, intent words) that costs far more than the rare hits. A prefilter
# of the literal prefixes the pattern's matches can start with jumps straight to the few positions where a
# match may start, and the full pattern is tried only there: the matches found are exactly the pattern's.
try:
    from re import _constants as _sre_c  # type: ignore[attr-defined]  # private, but stable since 3.11
    from re import _parser as _sre_parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - other interpreters: fall back to plain scanning
    _sre_parser = None

_MAX_PREFIXES = 200  # more literal prefixes than this make the prefilter itself slow (a trie of 200 is
# still quick, and longer prefixes give fewer false hints: the month-year gate went from 2 atoms to 3)


def _class_atom(items: list) -> str | None:
    """A parsed character class back as regex source (one atom), or None when it is not a plain class."""
    parts: list[str] = []
    for op, av in items:
        if op is _sre_c.LITERAL:
            parts.append(re.escape(chr(av)))
        elif op is _sre_c.RANGE:
            parts.append(f"{re.escape(chr(av[0]))}-{re.escape(chr(av[1]))}")
        elif op is _sre_c.CATEGORY and av is _sre_c.CATEGORY_DIGIT:
            parts.append(r"\d")
        else:
            return None
    return "[" + "".join(parts) + "]"


def _class_chars(items: list) -> str | None:
    """The characters of a small class made only of literals and short ranges, else None."""
    chars: list[str] = []
    for op, av in items:
        if op is _sre_c.LITERAL:
            chars.append(chr(av))
        elif op is _sre_c.RANGE and av[1] - av[0] < 12:
            chars.extend(chr(c) for c in range(av[0], av[1] + 1))
        else:
            return None
    return "".join(chars) if len(chars) <= 12 else None


def _lookbehind_atom(sub: Any) -> str | None:  # an re._parser.SubPattern
    """A negative lookbehind on one plain class that whitespace passes, as regex source; else None."""
    items = list(sub)
    if len(items) != 1 or items[0][0] is not _sre_c.IN:
        return None
    atom = _class_atom(items[0][1])
    return None if atom is None or re.search(atom, _SPLIT_WS) else f"(?<!{atom})"


def _prefixes(
    items: list, prefix: tuple[str, ...], k: int, out: set[tuple[str, ...]], lookbehinds: bool = False
) -> None:
    """Collect every sequence of up to k atoms a match of `items` can begin with (a superset, never fewer).

    With `lookbehinds`, a leading negative lookbehind on a class is kept as a zero-width first atom.
    """
    if len(prefix) >= k or not items or len(out) > _MAX_PREFIXES:
        out.add(prefix)
        return
    (op, av), rest = items[0], items[1:]
    if op is _sre_c.LITERAL:
        _prefixes(rest, (*prefix, re.escape(chr(av))), k, out, lookbehinds)
    elif op is _sre_c.IN:
        chars = _class_chars(av)
        atom = _class_atom(av)
        if (
            chars is not None
        ):  # a few plain characters: one literal prefix each keeps the first-character skip
            for ch in chars:
                _prefixes(rest, (*prefix, re.escape(ch)), k, out, lookbehinds)
        elif atom is None:
            out.add(prefix)
        else:
            _prefixes(rest, (*prefix, atom), k, out, lookbehinds)
    elif op is _sre_c.BRANCH:
        for alt in av[1]:
            _prefixes(list(alt) + rest, prefix, k, out, lookbehinds)
    elif op is _sre_c.SUBPATTERN and not av[1] and not av[2]:  # a group without inline flags
        _prefixes(list(av[3]) + rest, prefix, k, out, lookbehinds)
    elif op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
        lo, hi, sub = av
        for n in range(lo, min(hi, lo + k) + 1):
            _prefixes(list(sub) * n + rest, prefix, k, out, lookbehinds)
    elif lookbehinds and not prefix and op is _sre_c.ASSERT_NOT and av[0] == -1 and (lb := _lookbehind_atom(av[1])):
        _prefixes(rest, (lb,), k + 1, out, lookbehinds)  # zero-width: it takes no place among the k atoms
    elif op in (_sre_c.ASSERT, _sre_c.ASSERT_NOT, _sre_c.AT):  # zero-width: skipping it only widens the set
        _prefixes(rest, prefix, k, out, lookbehinds)
    else:
        out.add(prefix)


def _prefilter(pattern: str) -> re.Pattern[str] | None:
    """A regex of the prefixes every match of `pattern` starts with; None when a match may start anywhere."""
    if _sre_parser is None:
        return None
    items = list(_sre_parser.parse(pattern))
    for k in (5, 4, 3, 2):
        out: set[tuple[str, ...]] = set()
        _prefixes(items, (), k, out)
        if len(out) > _MAX_PREFIXES:
            continue  # too many to be quick: try shorter prefixes
        if () in out:
            return None  # a match may start anywhere
        if True:
            return re.compile(_atom_trie(sorted(out)))
    return None


def _atom_trie(prefixes: list[tuple[str, ...]]) -> str:
    """Alternatives shaped as a trie, so the engine checks about one atom per position, not every prefix."""
    if any(not p for p in prefixes):
        return ""  # a shorter prefix already matches here
    heads: dict[str, list[tuple[str, ...]]] = {}
    for p in prefixes:
        heads.setdefault(p[0], []).append(p[1:])
    alts = [head + _atom_trie(tails) for head, tails in heads.items()]
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


class _Scanner:
    """A compiled pattern whose finditer/search skip ahead with a prefilter; results equal the pattern's."""

    __slots__ = ("_pre", "_rx", "pattern")

    def __init__(self, pattern: str, prefilter: str | None = None) -> None:
        """`prefilter`, when given, must match at every position where `pattern` matches (a hand-made, more
        selective gate than the derived prefixes; it only saves trying the full pattern where it cannot match)."""
        self.pattern = pattern
        self._rx = re.compile(pattern)
        self._pre = re.compile(prefilter) if prefilter is not None else _prefilter(pattern)

    def finditer(self, text: str) -> Sequence[re.Match[str]]:
        """The matches re.finditer gives (none of these patterns matches the empty string), in order."""
        if self._pre is None:
            return list(self._rx.finditer(text))
        search, match = self._pre.search, self._rx.match
        hint = search(text)
        if hint is None:  # the usual case for most attribute patterns: no list, no loop
            return ()
        found: list[re.Match[str]] = []
        pos = 0
        while hint is not None:
            m = match(text, hint.start())
            if m is None:
                pos = hint.start() + 1
            else:
                found.append(m)
                pos = m.end()
            hint = search(text, pos)
        return found

    def finditer_at(self, text: str, starts: list[int] | None) -> Sequence[re.Match[str]]:
        """finditer's matches, trying the pattern only at `starts`: ascending, and holding every position
        where a match may start (from _span_starts); None tries everywhere."""
        if starts is None:
            return self.finditer(text)
        found: list[re.Match[str]] = []
        match = self._rx.match
        after = 0  # finditer resumes after each match: a start inside it is no start
        for p in starts:
            if p >= after and (m := match(text, p)) is not None:
                found.append(m)
                after = m.end()
        return found

    def search_at(
        self, text: str, starts: list[int] | None, pos: int = 0, before: int | None = None
    ) -> re.Match[str] | None:
        """search's first match from `pos` on (and before `before`), tried only at `starts` as finditer_at."""
        if starts is None:
            return self.search(text, pos, before)
        match = self._rx.match
        for p in starts:
            if before is not None and p >= before:
                return None
            if p >= pos and (m := match(text, p)) is not None:
                return m
        return None

    def search(self, text: str, pos: int = 0, before: int | None = None) -> re.Match[str] | None:
        """The first match from `pos` on, as re.search gives it (so a loop from each match's end = finditer).

        With `before`, only a match starting before that index counts: the scan stops there, not at the end.
        """
        if self._pre is None:
            m = self._rx.search(text, pos)
            return m if m is None or before is None or m.start() < before else None
        search, match = self._pre.search, self._rx.match
        while (hint := search(text, pos)) is not None:
            if before is not None and hint.start() >= before:
                return None
            m = match(text, hint.start())
            if m is not None:
                return m
            pos = hint.start() + 1
        return None


# ---------------------------------------------------------------- folding (same length as the input)
def _build_fold_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for cp in range(0x80, 0x250):
        ch = chr(cp)
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)).lower()
        if len(base) == 1 and base != ch:
            table[cp] = base
    for ch in "\u00a0\u202f\u2009\u2007\u200a\u2002\u2003\u3000":
        table[ord(ch)] = " "
    for ch in "\u2019\u2018\u02bc\u00b4\u2032":
        table[ord(ch)] = "'"
    for ch in "\u201c\u201d\u00ab\u00bb":
        table[ord(ch)] = '"'
    for ch in "\u2010\u2011\u2012\u2013\u2014\u2212":
        table[ord(ch)] = "-"
    table[ord("\u00df")] = "s"
    return table


_FOLD_TABLE = _build_fold_table()
_FOLD_CHARS = {chr(cp): repl for cp, repl in _FOLD_TABLE.items()}
# A dealer message has a handful of accents or odd spaces at most: replacing just those beats str.translate,
# which looks up every character.
_FOLD_CHARS_RE = re.compile("[" + "".join(re.escape(ch) for ch in _FOLD_CHARS) + "]")


def _fold_char(m: re.Match[str]) -> str:
    return _FOLD_CHARS[m.group()]


def _fold(text: str) -> str:
    """Lower-case, strip accents, unify quotes/dashes/spaces; keeps every index aligned with `text`."""
    if text.isascii():  # the table only maps non-ASCII characters
        return text.lower()
    mapped = _FOLD_CHARS_RE.sub(_fold_char, text)
    folded = mapped.lower()
    if len(folded) != len(text):  # rare characters whose lower case is longer (e.g. "İ")
        folded = "".join(c if len(c.lower()) != 1 else c.lower() for c in mapped)
    return folded


_NORM_REF_RE = re.compile(r"[\s./\-]+")


def normalize_reference(ref: str) -> str:
    """Upper case without spaces, dots, dashes and slashes: the form references are compared in."""
    return _NORM_REF_RE.sub("", ref.upper())


# ---------------------------------------------------------------- prices
_NUM = r"\d{1,3}(?:[ .,']\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,3})?"
_CUR_PRE = r"us\$|usdt|usd|eur|euros?|chf|gbp|hk\$|hkd|aed|sgd|s\$|jpy|cad|aud|[$€£¥]"
_CUR_POST = (
    r"€|£|¥|\$(?![ ]?\d)|usdt\b|usd\b|eur\b|euros?\b|chf\b|gbp\b|hkd\b|aed\b|dhs?\b|dirhams?\b|sgd\b|jpy\b|yen\b"
    r"|cad\b|aud\b|dollars?\b|bucks\b|francs?\b|pounds?\b|e(?![a-z])"
)
# The price pattern is, in effect, (?<![\w.,/$€£])(?:(?P<pre>{_CUR_PRE})[ ]?)?(?P<num>{_NUM})... . Written that way
# it starts with a lookbehind, and the engine tries it at every position. Here it starts with a class of the
# characters a price can start with and tests the lookbehind right after it, so the engine skips straight to
# them; the rest is the same pattern with that first character taken: `nr` is the number after its first digit,
# `pr` the currency after its first character (the same alternatives; those sharing a first character keep
# their order). The lookbehind's class lists a-z and 0-9 before \w: the engine tests a set's items in order,
# and nearly every character it rejects there is a lower-case letter or a digit.
_NUM_REST = r"\d{0,2}(?:[ .,']\d{3})+(?:[.,]\d{1,2})?|\d*(?:[.,]\d{1,3})?"  # _NUM after its first digit
# _CUR_PRE after its first character. Each word is led by its second character and checks its first with a
# lookbehind afterwards: the engine rejects a literal-led alternative at a glance, while a lookbehind-led one
# costs a look back at every letter that may start a word (same words, same order among equal first letters).
_CUR_PRE_REST = (
    r"s\$(?<=us\$)|sdt(?<=usdt)|sd(?<=usd)|ur(?<=eur)|uros(?<=euros)|uro(?<=euro)|hf(?<=chf)|bp(?<=gbp)"
    r"|k\$(?<=hk\$)|kd(?<=hkd)|ed(?<=aed)|gd(?<=sgd)|\$(?<=s\$)|py(?<=jpy)|ad(?<=cad)|ud(?<=aud)|(?<=[$€£¥])"
)
_PRICE_RE = re.compile(
    rf"[0-9$€£¥uecghasj](?<![a-z0-9.,/$€£\w].)(?:(?<=\d)(?P<nr>{_NUM_REST})|(?P<pr>{_CUR_PRE_REST})[ ]?(?P<num>{_NUM}))"
    rf"(?:[ ]?(?P<mult>k(?![a-z])|m(?![a-z])|mio\b|mil\b|million\b)(?P<kd>\d{{1,3}}(?![\d.,]))?)?"
    rf"(?:[ ]?(?:,-|\.-|\.--))?"
    rf"(?:[ ]?(?P<post>{_CUR_POST}))?"
)
assert _PRICE_RE.groups == 6 and _PRICE_RE.groupindex["nr"] == 1  # _find_prices reads lastindex == 1 as bare
_PRICE_KEYWORDS = ("pri", "px", "ask", "budget", "tarif")  # every keyword holds one (see _scan_tokens)
_PRICE_KEYWORD_RE = _Scanner(
    rf"\b(?:prix|price|px|asking|budget|tarif|ask)\s*:?\s*(?P<num>{_NUM})(?![\d.,]*\s?(?:mm|k\b))"
)
_DIGIT_RE = re.compile(r"\d")
_SPLIT_FRAC_RE = re.compile(r"^(.*?)(?:[.,](\d{1,2}))?$")
_GROUP_SEP_RE = re.compile(r"[ .,']")
_ENDS_GROUPED_RE = re.compile(r"[ .,']\d{3}$")
_GROUPED_RE = re.compile(r"^\d{1,3}(?:[ .,']\d{3})+(?:[.,]\d{1,2})?$")
_CURRENCY_CODES = {
    "$": "USD", "us$": "USD", "usd": "USD", "dollar": "USD", "dollars": "USD", "bucks": "USD",
    "€": "EUR", "eur": "EUR", "euro": "EUR", "euros": "EUR", "e": "EUR",
    "£": "GBP", "gbp": "GBP", "pound": "GBP", "pounds": "GBP",
    "chf": "CHF", "franc": "CHF", "francs": "CHF",
    "hkd": "HKD", "hk$": "HKD", "aed": "AED", "dh": "AED", "dhs": "AED", "dirham": "AED", "dirhams": "AED",
    "sgd": "SGD", "s$": "SGD", "jpy": "JPY", "yen": "JPY", "¥": "JPY", "cad": "CAD", "aud": "AUD", "usdt": "USDT",
}  # fmt: skip
_SYMBOLS = {"$", "€", "£", "¥", "us$", "hk$", "s$"}
_KARATS = {9.0, 10.0, 14.0, 18.0, 22.0, 24.0}
_EXTRA_BEFORE_RE = _Scanner(
    r"(?:\+|acompte|deposit|depot|port|shipping|envoi|frais|fee|label|dep|plus)\W{0,4}(?:de\W{0,3})?$"
)
_EXTRA_AFTER_RE = re.compile(r"^\s{0,2}(?:de port|d'envoi|shipping|pour reserver|deposit|de frais|fee)")
# Every match of the two holds one of these (none holds whitespace): a text without any has no extra
# (see _scan_tokens).
_EXTRA_WORDS = ("+", "acompte", "deposit", "depot", "port", "shipping", "envoi", "frais", "fee", "label", "dep", "plus",
                "reserver")  # fmt: skip


# The small records of this module are plain classes with their own __init__, not dataclasses: the compiled
# build makes them native, while a dataclass's generated __init__ would stay interpreted (~2,000 instructions).
class _Price:
    __slots__ = ("amount", "currency", "end", "extra", "scaled_k", "start")

    def __init__(
        self, start: int, end: int, amount: float, currency: str | None, extra: bool, scaled_k: bool
    ) -> None:
        self.start = start
        self.end = end
        self.amount = amount
        self.currency = currency
        self.extra = extra  # shipping, deposit, "+ label": not the watch's asking price
        self.scaled_k = scaled_k


@lru_cache(maxsize=65536)
def _parse_number(num: str, has_mult: bool) -> float | None:
    """Read a dealer's number: '8.200' and '8 200' are thousands, '8,2' and '19.9' decimals."""
    num = num.strip()
    if _GROUPED_RE.match(num):
        m = _SPLIT_FRAC_RE.match(num)
        assert m is not None
        whole = _GROUP_SEP_RE.sub("", m.group(1))
        frac = m.group(2)
        if frac and m.group(1) and _ENDS_GROUPED_RE.search(m.group(1)):
            return float(f"{whole}.{frac}")
        return float(_GROUP_SEP_RE.sub("", num))
    if "." in num or "," in num:
        whole, _, frac = num.replace(",", ".").partition(".")
        if len(frac) == 3 and not has_mult:
            return float(whole + frac)
        return float(f"{whole}.{frac}")
    return float(num)


# Where a price match may start inside a whitespace token: _PRICE_RE's first character and the lookbehind
# after it, and for a currency word before the number, the word followed by a digit or by the token's end (the
# pattern's `[ ]?` then a digit). The price pattern, led by a class of common letters, is otherwise tried at
# every one of them (some 40 positions in a message of 110 characters) for about 4 that can start a match.
# (_scan_tokens finds these offsets.)
_PRICE_GATE = re.compile(rf"(?<![a-z0-9.,/$€£\w])(?:[0-9$€£¥]|(?=(?:{_CUR_PRE})(?:\d|$)))")
# What a price match may go on with after a space (the pattern's `[ ]`s): a digit, a multiplier, ",-", a currency.
# A token that starts with none of these cannot carry on a price from the token before it.
_PRICE_GOES_ON_RE = re.compile(rf"\d|k(?![a-z])|m(?![a-z])|mio\b|mil\b|million\b|,-|\.-|{_CUR_POST}")


def _find_prices(folded: str, starts: _TextStarts | None = None) -> list[_Price]:
    """Every price with a currency, a k/m multiplier or a price keyword, in text order.

    `starts`, when the caller has them: _scan_tokens' of the text.
    """
    found: list[_Price] = []
    if starts is None:
        if not _DIGIT_RE.search(folded):  # every price has a number
            return found
        starts = _scan_tokens(folded, folded.split())
    if not starts.prices and not starts.keyword:  # most texts without a price
        return found
    match = _PRICE_RE.match
    resume = 0  # as finditer: resume after each match, a start inside it is no start
    bare_ends = starts.price_bare_ends
    for i, p in enumerate(starts.prices):
        if p < resume:
            continue
        if bare_ends[i] >= 0:  # the match here is known from its token: a bare number, no price
            resume = bare_ends[i]
            continue
        if (m := match(folded, p)) is None:
            continue
        resume = m.end()
        if m.lastindex == 1:  # only `nr` took part: a bare number (most matches), no price
            continue
        nr, _pr, num, mult, kd, post = m.groups()
        if nr is not None:  # led by a digit: no currency before the number
            if not (post or mult):
                continue  # a bare number
            pre = None
            num_end = m.end("nr")
            num = folded[m.start() : num_end]
        else:
            pre = folded[m.start() : m.end("pr")]
            num_end = m.end("num")
        if post == "e" and (mult is None and m.start("post") != num_end):
            continue  # "3200e" only when glued
        if post == "e" and mult is None and not re.fullmatch(r"\d{2,6}", num):
            continue
        amount = _parse_number(num, bool(mult))
        if amount is None:
            continue
        code = None
        if post:
            code = _CURRENCY_CODES.get(post.strip().rstrip("s") if post not in _CURRENCY_CODES else post)
            if code is None:
                code = _CURRENCY_CODES.get(post.strip())
        if pre:
            pre_code = _CURRENCY_CODES.get(pre)
            # "$840000 HKD": a code after the number names the currency more precisely than a symbol before.
            if code is None or (post in _SYMBOLS and pre not in _SYMBOLS):
                code = pre_code
        if mult:
            if mult.startswith("m") and code is None:
                continue  # 300m is a depth
            if mult == "k" and code is None and amount in _KARATS:
                continue  # 18k is gold
            factor = 1000.0 if mult == "k" else 1_000_000.0
            if kd:
                amount = amount + int(kd) / (10 ** len(kd))
            amount *= factor
        elif code is None:
            continue
        if amount <= 0:
            continue
        if code is None and not mult:
            continue
        start, end = m.start(), m.end()
        before = folded[max(0, start - 16) : start]
        after = folded[end : end + 20]
        extra = starts.extra_words and bool(_EXTRA_BEFORE_RE.search(before) or _EXTRA_AFTER_RE.match(after))
        found.append(_Price(start, end, round(amount, 2), code, extra, False))
    for m in _PRICE_KEYWORD_RE.finditer(folded) if starts.keyword else ():
        s = m.start("num")
        if any(p.start <= s < p.end for p in found):
            continue
        amount = _parse_number(m.group("num"), False)
        if amount is None or amount < 50 or 1930 <= amount <= 2035:
            continue
        found.append(_Price(s, m.end("num"), amount, None, False, False))
    found.sort(key=_START)
    return found


def parse_prices(text: str) -> list[tuple[float, str | None]]:
    """Every price in the text as (amount, ISO currency or None), skipping years, sizes, karats and depths."""
    folded = _fold(text[:MAX_TEXT_CHARS])
    return [(p.amount, p.currency) for p in _find_prices(_mask_phones(folded))]


# ---------------------------------------------------------------- phones and dates (never prices or references)
_PHONE_RE = re.compile(
    r"(?<![\w.,/])\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,5}(?![\w/])"
    r"|(?<![\w.,/])0\d(?:[ .-]?\d{2}){4}(?![\w/])"
    r"|(?<![\w.,/])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\w/])|<phone>"
)


# Every phone match also holds one of these (each alternative above without its look-arounds), so without one
# the (slow, lookbehind-led) phone scan cannot change the text. Each alternative starts with a literal (the
# digit-led one is spelt out per digit), so the engine jumps from one "+", "<" or digit to the next instead of
# trying the pattern at every position.
_PHONE_SHAPE_RE = re.compile(
    r"\+\d|0\d(?:[ .-]?\d\d){4}|"
    + "|".join(rf"{d}\d\d\)?[ .-]\d{{3}}[ .-]\d{{4}}" for d in "0123456789")
    + "|<phone>"
)


def _mask_phones(folded: str, digit_run: int | None = None) -> str:
    """Blank out phone numbers so their digits are taken for nothing.

    `digit_run`, when the caller has it (_scan_tokens' phone_digits): the most digits in a stretch of the text
    holding only digits, whitespace and .-()+, as every phone match does; one with fewer than 8 stays as it is.
    """
    if digit_run is not None and digit_run < 8 and "<phone>" not in folded:
        return folded  # most messages: no stretch long enough (their digits are in references, years, prices)
    if _PHONE_SHAPE_RE.search(folded) is None:
        return folded

    def blank(m: re.Match[str]) -> str:
        digits = sum(ch.isdigit() for ch in m.group())
        if m.group() != "<phone>" and digits < 8:
            return m.group()
        return " " * len(m.group())

    return _PHONE_RE.sub(blank, folded)


# ---------------------------------------------------------------- references
_REF_CANDIDATE_RE = re.compile(
    r"(?<![\w/.])(?<!\w-)(?:(?P<pfx>rm|pam|ref|ref\.|reference|réf)[ ]?[:#.]?[ ]?-?)?"
    r"(?P<tok>[a-z]{0,5}\d[a-z0-9]*(?:[./\-][a-z0-9]+)*)"
)
_UNIT_RE = re.compile(
    r"^(\d+)(MM|M|FT|K|KT|CT|PCS|PC|H|TH|ND|RD|X|AM|PM|S|MIN|HZ|ATM|BAR|MIL|L|CM|KM|J|Y|YR|YRS|ER|E|EME)$"
)
_DATE_TOKEN_RE = re.compile(r"^N?\d{1,2}/\d{2,4}$")
_CORE_RE = re.compile(r"^[A-Z]?\d{4,6}[A-Z]{0,6}")
_SUFFIX_WORD_RE = re.compile(r"^[ ]([a-z]{2,5})(?![a-z0-9])")
_LEAD_LETTERS_RE = re.compile(r"^[A-Z]+")
_YEAR_MIN, _YEAR_MAX = 1930, 2030


class _Ref:  # a plain class, not a dataclass: see _Price
    __slots__ = ("brand", "end", "exact", "family", "needs_context", "ref", "start")

    def __init__(
        self, start: int, end: int, ref: str, brand: str | None, family: str | None, needs_context: bool, exact: bool
    ) -> None:
        self.start = start
        self.end = end
        self.ref = ref
        self.brand = brand
        self.family = family
        self.needs_context = needs_context  # a bare 4-digit number: only a reference if its brand is named nearby
        self.exact = exact  # found in the catalogue (not only by shape)


@lru_cache(maxsize=65536)
def _lookup_reference(n: str, raw: str) -> tuple[tuple[tuple[str, str | None], ...], bool]:
    """Catalogue entries for a normalised reference and whether the whole reference matched (not a shortening)."""
    refs = CATALOG.references
    hit = refs.get(n)
    if hit:
        return hit, True
    candidates: list[str] = []
    if "/" in raw:
        candidates.append(normalize_reference(raw.split("/", 1)[0]))
    if "-" in raw:
        candidates.append(normalize_reference(raw.split("-", 1)[0]))
    if "." in raw:
        candidates.append(normalize_reference(raw.split(".", 1)[0]))
    if n.startswith("PAM"):
        digits = n[3:].split(".")[0]
        if digits.isdigit():
            candidates.append("PAM" + digits.zfill(5))
    if n.startswith("M") and n[1:2].isdigit():
        candidates.append(n[1:])
    core = _CORE_RE.match(n)
    if core:
        candidates.append(core.group())
    for i, key in enumerate(candidates):
        if len(key) >= 4 and key in refs:
            return refs[key], i < len(candidates) - (1 if core else 0) and not key.isdigit()
    if len(n) >= 6:
        keys = CATALOG.sorted_reference_keys
        i = bisect.bisect_left(keys, n)
        found: set[tuple[str, str | None]] = set()
        while i < len(keys) and keys[i].startswith(n) and len(found) < 8:
            found.update(refs[keys[i]])
            i += 1
        brands = {b for b, _ in found}
        if len(brands) == 1:
            families = {f for _, f in found}
            return ((brands.pop(), families.pop() if len(families) == 1 else None),), True
    return (), False


def _family_by_prefix(brand: str, n: str) -> str | None:
    table = CATALOG.prefix_families.get(brand)
    if not table:
        return None
    for size in range(min(6, len(n)), 2, -1):
        fam = table.get(n[:size])
        if fam:
            return fam
    return None


@lru_cache(maxsize=65536)
def _classify_reference(raw: str, explicit: bool) -> tuple[str, str | None, str | None, bool, bool] | None:
    """Decide whether a token is a reference: (ref, brand, family, needs_context, exact) or None."""
    t = raw.upper().strip("./-")
    n = normalize_reference(t)
    digits = sum(ch.isdigit() for ch in n)
    if len(n) < 3 or _DATE_TOKEN_RE.match(t):
        return None
    if digits < 3 and not (n.startswith("RM") and digits >= 2):
        return None
    hit, full = _lookup_reference(n, t)
    unit = _UNIT_RE.match(n)
    if (
        unit
        and not (hit and full)
        and (len(unit.group(1)) <= 4 or unit.group(2) in ("MM", "M", "K", "KT", "CT", "PCS", "ATM", "BAR"))
    ):
        return None
    if n.isdigit() and n != t and len(n) >= 6:
        n_digits_only = False
    else:
        n_digits_only = n.isdigit()
    if re.fullmatch(r"(?:19|20)\d\d[-/](?:19|20)?\d\d", t):
        return None
    if n_digits_only:
        if len(n) == 4 and _YEAR_MIN <= int(n) <= _YEAR_MAX and not explicit:
            return None
        if len(n) <= 4:
            if hit and len({b for b, _ in hit}) == 1:
                return t, hit[0][0], hit[0][1], not explicit, True
            return (t, None, None, False, False) if explicit and len(n) >= 3 else None
        if hit:
            brand, family = hit[0] if len(hit) == 1 else (None, None)
            return t, brand, family, len(hit) > 1, True
        if len(n) == 6:
            brand = CATALOG.six_digit_prefix_brand.get(n[:3])
            if brand:
                return t, brand, _family_by_prefix(brand, n), False, False
        return (t, None, None, False, False) if explicit else None
    if n.isalpha():
        return None
    if unit and not hit:
        return None
    brand = family = None
    exact = False
    if hit:
        exact = full
        if len(hit) == 1:
            brand, family = hit[0]
        else:
            brand = None
    if brand is None and not hit:
        for shape_brand, rx in CATALOG.ref_shapes:
            if rx.match(t) or rx.match(n):
                brand = shape_brand
                break
    if brand is not None and family is None:
        family = _family_by_prefix(brand, n)
    if brand is None and not hit and not explicit:
        lead = _LEAD_LETTERS_RE.match(n)
        if digits < 4 or len(n) < 5 or (lead and len(lead.group()) > 3):
            return None
        if re.fullmatch(r"\d{3}-\d{2}", t):
            return None
    return t, brand, family, False, exact


# A reference candidate worked out on its token: (match length, _classify_reference of it); False for no match;
# None when the match must be tried on the text.
_RefMatch = tuple[int, tuple[str, str | None, str | None, bool, bool] | None] | bool | None


def _find_refs(masked: str, starts: list[tuple[int, _RefMatch]]) -> list[_Ref]:
    """Reference candidates in the phone- and price-masked folded text; `starts` from _mention_starts."""
    out: list[_Ref] = []
    match = _REF_CANDIDATE_RE.match
    after = 0  # finditer resumes after the last match: a start inside it is no start
    for p, found in starts:
        if p < after or found is False:
            continue
        if found is None:  # a prefix may reach past the token: match in the text
            if (m := match(masked, p)) is None:
                continue
            after = end = m.end()
            pfx, tok = m.group("pfx", "tok")
            explicit = bool(pfx and pfx.startswith("r") and pfx != "rm")
            raw = tok
            if pfx in ("rm", "pam"):
                raw = pfx + tok
            res = _classify_reference(raw, explicit)
            start = m.start("tok") if pfx not in ("rm", "pam") else m.start()
        else:  # no prefix: the candidate is the whole match
            size, res = found  # type: ignore[misc]  # neither False nor None here: a (size, result) pair
            after = end = p + size
            start = p
        if res is None:
            continue
        ref, brand, family, needs_context, exact = res
        if brand in (None, "Rolex") and ref.isdigit() and len(ref) >= 5:
            sm = _SUFFIX_WORD_RE.match(masked[end : end + 7])
            if sm and sm.group(1).upper() in CATALOG.rolex_suffixes:
                ref += sm.group(1).upper()
                end += sm.end()
                if brand is None:
                    brand = "Rolex"
        out.append(_Ref(start, end, ref, brand, family, needs_context, exact))
    return out


def reference_info(ref: str) -> tuple[str | None, str | None]:
    """(brand, family) the catalogue and the reference rules give a reference, e.g. '116610LN' -> Rolex, Submariner."""
    res = _classify_reference(ref.strip().lower(), True)
    if res is None:
        return None, None
    return res[1], res[2]


# ---------------------------------------------------------------- brand / family aliases
def _trie_regex(words: list[str]) -> str:
    """One regular expression for many literals, shaped as a trie so matching stays fast."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = True

    def emit(node: dict) -> str:
        alts: list[str] = []
        optional = False
        for ch in sorted(node):
            if ch == "":
                optional = True
                continue
            piece = r"\s+" if ch == " " else re.escape(ch)
            alts.append(piece + emit(node[ch]))
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if optional else body

    return emit(trie)


_ALIASES = CATALOG.aliases
# Catalogue tables read on every message, bound once (the compiled build reads a module global directly).
_FAMILY_BRAND = CATALOG.family_brand
_LUXURY_BRANDS = CATALOG.luxury_brands
_ALIAS_RE = re.compile(
    r"(?<![a-z0-9])(?:" + _trie_regex(sorted(_ALIASES, key=len, reverse=True)) + r")(?![a-z0-9])"
)
_WS_RE = re.compile(r"\s+")

_FUZZY_CHOICES: dict[str, str] = {}
for _key, _alias in _ALIASES.items():
    if " " not in _key and _key.isalpha() and (len(_key) >= 5 if _alias.family is None else len(_key) >= 6):
        _FUZZY_CHOICES[_key] = _key
_FUZZY_STOPWORDS = frozenset(
    "roles rolls model models modele omega's tudors close order cartel panel pilot pilots marine master "
    "monaco mondo datum daily dates dated dating submarine seaside overseas oversea polar motor motors "
    "latest lately laura later label labels lange range ranges orange change chance carte cartes carter "
    "zenith zeniths heure heures heuer neuve neuves neuf state states stock stocks tissue rados radio "
    "omelette homage hommage patent patek's audio audit pateks prices price prise prisé".split()
)
_WORD_RE = re.compile(r"[a-z][a-z]{4,13}")  # = [a-z]{5,14}; led by a class, so the engine skips to letters


@lru_cache(maxsize=65536)
def _fuzzy_alias(token: str) -> str | None:
    """A misspelt brand or family name ('omaga', 'submarinr') -> its alias key, via rapidfuzz."""
    if token in _FUZZY_STOPWORDS or token in _ALIASES:
        return None
    cutoff = 80 if len(token) <= 6 else 85
    match = process.extractOne(token, _FUZZY_CHOICES, scorer=fuzz.ratio, score_cutoff=cutoff)
    if match is None:
        return None
    key = match[2]
    if _ALIASES[key].family is not None and match[1] < 88:
        return None  # family names are many and close to everyday words: demand a closer spelling
    if key[0] != token[0] or abs(len(key) - len(token)) > 2:
        return None
    return key


# ---------------------------------------------------------------- where references and aliases may start
# Both the reference and the alias patterns start with a lookbehind, so the engine would try them at every
# position of the text. A match of either can only start at a few offsets inside a whitespace token, found here
# once per distinct token (see _scan_tokens).
_REF_HEAD_RE = re.compile(r"rm|pam|ref|réf|[a-z]{0,5}\d")  # how every reference candidate match begins
_REF_BAD_BEFORE_RE = re.compile(r"[\w/.]")  # the candidate pattern's lookbehinds, applied inside a token
_WORD_CHAR_RE = re.compile(r"\w")
_RUN_RE = re.compile(r"[a-z0-9]+")
# An alias match starts where a run of [a-z0-9] starts, and that run is the first run of its key (the key's
# next character, if any, is not [a-z0-9] and stands for itself or for whitespace).
_ALIAS_FIRST_RUNS = frozenset(m.group() for k in _ALIASES if (m := _RUN_RE.match(k)) is not None)
# An alias match reads past its token only through a space of its key, after the key's part before that space.
_ALIAS_SPACE_HEADS = frozenset(k[: k.index(" ")] for k in _ALIASES if " " in k)
# An alias match worked out on its token: (match length, the key matched); False for no match; None when the
# match must be tried on the text.
_AliasMatch = tuple[int, str] | bool | None


def _alias_in_token(tok: str, i: int) -> _AliasMatch:
    """The alias match at offset i of a token, worked out on the token alone when that gives the text's.

    A key with a space goes on past the token only when the rest of the token is its part before the space;
    otherwise the match in the text is the match in the token (the lookarounds see the same characters, and
    whitespace or nothing past the token).
    """
    if tok[i:] in _ALIAS_SPACE_HEADS:
        return None
    m = _ALIAS_RE.match(tok, i)
    if m is None:
        return False
    return m.end() - i, m.group()


_KNOWN_TOKENS_MAX = 200_000  # the per-token tables are bounded like the lru caches: cleared when full


def _ref_offsets(tok: str) -> list[int]:
    """The offsets of a token where a reference candidate may start (see _scan_tokens)."""
    return [
        i
        for i, ch in enumerate(tok)
        if ("a" <= ch <= "z" or "0" <= ch <= "9")
        and not (
            i
            and (
                _REF_BAD_BEFORE_RE.match(tok[i - 1])
                or (tok[i - 1] == "-" and i >= 2 and _WORD_CHAR_RE.match(tok[i - 2]))
            )
        )
        and _REF_HEAD_RE.match(tok, i)
    ]


_REF_PREFIX_WORDS = ("rm", "pam", "ref", "réf")  # how every `pfx` of the candidate pattern begins


def _ref_in_token(tok: str, i: int) -> _RefMatch:
    """The candidate match at offset i of a token, worked out on the token alone when that gives the text's.

    Only a `pfx` may reach past whitespace ("ref 5711"): where none can start, the match in the text is the
    match in the token (the lookbehinds see the same character inside it, and whitespace or nothing at its
    start; nothing else reads past the match). Returns None where the text must be matched.
    """
    if tok.startswith(_REF_PREFIX_WORDS, i):
        return None
    m = _REF_CANDIDATE_RE.match(tok, i)
    if m is None:
        return False
    return m.end() - i, _classify_reference(m.group("tok"), False)


def _locate(text: str, token: str, pos: int) -> int:
    """Where a whitespace token of `text` stands: its first occurrence from `pos` standing alone between
    whitespace. Callers go through the tokens in order and skip some; a skipped token has another text, so an
    occurrence standing alone is the token's own."""
    size, n = len(token), len(text)
    at = text.find(token, pos)
    # A plain space, the usual neighbour, is told apart before the (slower) isspace call.
    while (at and (ch := text[at - 1]) != " " and not ch.isspace()) or (
        at + size < n and (ch := text[at + size]) != " " and not ch.isspace()
    ):
        at = text.find(token, at + 1)
    return at


class _Mention:
    __slots__ = ("brand", "end", "family", "ref", "start", "weak")

    def __init__(
        self, start: int, end: int, brand: str | None, family: str | None, weak: bool, ref: _Ref | None = None
    ) -> None:
        self.start = start
        self.end = end
        self.brand = brand
        self.family = family
        self.weak = weak
        self.ref = ref


def _covers(spans: list[tuple[int, int]], i: int) -> bool:
    """Whether position i lies in one of the spans."""
    for start, end in spans:
        if start <= i < end:
            return True
    return False


def _find_alias_mentions(
    folded: str,
    original: str,
    taken: list[tuple[int, int]],
    starts: list[tuple[int, _AliasMatch]],
    fuzzy: set[str],
) -> list[_Mention]:
    """Brand and family names (exact aliases, then misspellings).

    `starts`: where an alias may start (see _mention_starts); `fuzzy`: the words of the text that are misspelt
    names (_scan_tokens'; of the text before prices were blanked is as good: a price never cuts a word).
    """
    out: list[_Mention] = []
    covered = list(taken)  # spans of the references, then of the aliases found: a handful
    match = _ALIAS_RE.match
    after = 0  # as in _find_refs: resume after the last match, as finditer does
    for p, found in starts:
        if p < after or found is False:
            continue
        if found is None:  # a key with a space may reach past the token: match in the text
            if (m := match(folded, p)) is None:
                continue
            s, e = m.span()
            key = m.group()
            if not key.isalnum():  # only aliases of several words can hold whitespace (maybe a newline)
                key = _WS_RE.sub(" ", key)
        else:
            size, key = found  # type: ignore[misc]  # neither False nor None here: a (size, key) pair
            s, e = p, p + size
        after = e
        if _covers(covered, s) or _covers(covered, e - 1):
            continue
        alias = _ALIASES.get(key)
        if alias is None:
            continue
        if alias.upper_only and not original[s:e].isupper():
            continue
        out.append(_Mention(s, e, alias.brand, alias.family, alias.weak))
        covered.append((s, e))
    # Most words are no misspelt alias: look each distinct word up once and walk positions only for hits.
    for m in _WORD_RE.finditer(folded) if fuzzy else ():
        if m.group() not in fuzzy:
            continue
        s, e = m.span()
        if _covers(covered, s) or _covers(covered, e - 1):
            continue
        if (s > 0 and folded[s - 1].isalnum()) or (e < len(folded) and folded[e].isalnum()):
            continue
        fuzzy_key = _fuzzy_alias(m.group())
        if fuzzy_key is not None:
            alias = _ALIASES[fuzzy_key]
            out.append(_Mention(s, e, alias.brand, alias.family, True))
    out.sort(key=_START)
    return out


# ---------------------------------------------------------------- attributes
_CONDITION_RE = _Scanner(
    r"(?<![a-z])(?P<excellent>like[ -]?new|lnib|as new|comme neuve?s?|quasi[ -]neuve?s?|etat neuf|mint(?! green)|near mint"
    r"|slider|retail ready|excellent|pristine|top condition|10/10|very good|tres tres bon etat)(?![a-z])"
    r"|(?<![a-z])(?P<new>bnib|brand new|new|neuve?s?|neufs?|jamais portee?s?|never worn|unworn|non portee?|nos|n\d{1,2}/\d{2,4}"
    r"|full stickers|stickers?|stickered)(?![a-z])"
    r"|(?<![a-z])(?P<good>tbe|tres bon etat|bon etat|good condition|great condition|vgc|etat correct|be)(?![a-z])"
    r"|(?<![a-z])(?P<used>used|pre-?owned|pre owned|preloved|pre|occasion|d'occasion|cpo|second hand|worn|portee?)(?![a-z])"
    r"|(?<![a-z])(?P<vintage>vintage|ancienne)(?![a-z])"
)
_NOT_NEW_RE = re.compile(r"new (?:york|number|member|members|group|to |one|ones|arrival|arrivals|year|price)")
_ALT_RE = re.compile(r"^\s*(?:or|ou|/|,)\s*$")

_BOX_PAPERS_RE = _Scanner(
    r"(?P<none>naked|watch only|watch-only|montre seule|montre nue|head only|no box(?:,| or| and| ni| nor)? (?:no )?papers?|sans boite ni papiers)"
    r"|(?P<papers_only>watch (?:and|&|\+|w/) ?(?:\d{4} )?(?:card|cards|papers?|warranty)|minus (?:the )?box|w/c\b|w/card|papers only|card only|set minus box|no box|sans boite|without box)"
    r"|(?P<nobox>watch (?:and|&|\+) ?archives?)"
    r"|(?P<box_only>watch (?:and|&|\+) ?box|box only|no papers?|sans papiers?|without papers?|missing papers?|can'?t find papers?|papers? missing)"
    r"|(?P<full>full[ -]?set|fullset|full complete set|complete set|compelte set|complete|complet|completes?|b ?& ?p|b\+p|bnp|boite (?:et|\+|&)? ?papiers?"
    r"|box (?:and|&|\+) papers?|box papers|boite papiers|boite \+ carte|boite et carte|box (?:and|&|\+) cards?|(?<![a-z])fs(?![a-z])|bnib|lnib)"
    r"|(?P<papers>cards?|carte|papers?|papiers|warranty|garantie)"
    r"|(?P<box>box|boite|boxed)"
)
_FULL_SET_EXCEPT_RE = re.compile(r"full (?:factory|diamond) set|factory setting")
_OK_AFTER_RE = re.compile(r"\s*(?:ok|okay|accepted|acceptee?|possible|bienvenue?)\b")

# In effect (?<![\w./\-$€£])(?P<y>19[3-9]\d|20[0-3]\d)(?!...), led by the class of its first digit with the lookbehind
# tested right after it: the engine skips straight to each "1" or "2" and no Python loop walks the hints.
_YEAR_TAIL = r"(?![\w%]|[ ]?[+]|[ ]?-[ ]?(?:19|20)\d\d|/\d)"
_YEAR_RE = re.compile(r"(?P<y>[12](?<![\w./\-$€£].)(?:(?<=1)9[3-9]|(?<=2)0[0-3])\d)" + _YEAR_TAIL)
_MONTH_YEAR_RE = _Scanner(
    r"(?<![\w/.])(?:n)?(?:0?[1-9]|1[0-2])(?:/(?P<y>\d{2}|(?:19|20)\d\d)|[.](?P<y3>(?:19|20)\d\d))(?![\w/.])"
    r"|(?:jan|feb|fev|mar|apr|avr|may|mai|jun|juin|jul|juil|aug|aout|sep|oct|nov|dec)[a-z]*\.? (?P<y2>(?:19|20)\d\d)(?!\d)"
)
_YEAR_RANGE_RE = _Scanner(
    r"(?:19|20)\d\d\s?[-–]\s?(?:19|20)?\d\d|(?:19|20)\d\d\s?(?:\+|ou plus|or newer|and up|and newer|or later|ou plus recent|minimum|min\b)",
    # Every range has a year and then a dash, a plus or one of the words: a plain year is not worth a try.
    prefilter=r"(?:19|20)\d\d\s?(?:[-–+]|ou |or |and |min)",
)
_YEAR_SKIP_BEFORE_RE = _Scanner(
    r"(?:revisee?|service[d]?|serviced in|entretien|polie?|polished|can be|depuis|since|annees|years?|yr)\W{0,3}(?:ap\W{0,2})?(?:en|in)?\W{0,2}$"
)
# Every match of it holds one of these (none holds whitespace): without any, no year is skipped for it.
_YEAR_SKIP_WORDS = ("revis", "servic", "entretien", "poli", "can", "depuis", "since", "annees", "year", "yr")
_SIZE_RE = re.compile(r"(?<![\w.])(?P<s>[2-6]\d(?:[.,]\d)?)\s?mm(?![a-z])")
_MOVEMENT_RE = _Scanner(
    r"(?<![a-z])(?P<automatic>automatic|automatique|auto|self[- ]winding|perpetual rotor|calibre auto)(?![a-z])"
    r"|(?<![a-z])(?P<manual>manual|manuel|hand[- ]wound|hand[- ]winding|remontage manuel|handwound)(?![a-z])"
    r"|(?<![a-z])(?P<quartz>quartz|quarz)(?![a-z])"
)


# ---------------------------------------------------------------- which attribute scans a span needs
# Most spans name no movement, many no condition, box, papers or year. Every match of those patterns begins with
# one of a few literal prefixes, and the part of a prefix before its first possible whitespace lies inside one
# whitespace token of the span. Which of those cut prefixes a token holds depends on the token alone, so it is
# worked out once per distinct token (dealers repeat their words); a pattern is scanned only in spans with a
# token that holds one of its cut prefixes, and finds exactly what it found before (nothing, elsewhere).
_SPLIT_WS = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())  # what str.split splits on


_WS_ATOMS = frozenset(re.escape(ch) for ch in _SPLIT_WS)  # a prefix atom that matches whitespace only


def _token_gate(pattern: str, lead: str = "", lookbehinds: bool = False) -> re.Pattern[str] | None:
    """A regex that finds, inside one token, a cut prefix of every match of `pattern`; None if it cannot.

    A prefix cut before an atom that matches only whitespace must end its token. `lead`, when given, is an
    assertion on the character before every match of `pattern` (inside a token it sees the same character;
    at the token's start, whitespace or nothing, which it must accept). With `lookbehinds`, each
    alternative's own leading lookbehind (one that whitespace passes) is kept the same way.
    """
    if _sre_parser is None:
        return None
    items = list(_sre_parser.parse(pattern))
    for k in (4, 3, 2):
        out: set[tuple[str, ...]] = set()
        _prefixes(items, (), k, out, lookbehinds)
        if len(out) <= _MAX_PREFIXES:
            break
    else:
        return None
    cut: set[tuple[str, ...]] = set()
    for prefix in out:
        atoms: list[str] = []
        for atom in prefix:
            if atom.startswith("(?<!"):  # a kept lookbehind: zero-width, it sees the token as the text
                atoms.append(atom)
                continue
            if re.search(atom, _SPLIT_WS):  # a match may leave the token here
                if atom in _WS_ATOMS:
                    atoms.append(r"\Z")  # and surely does
                break
            atoms.append(atom)
        consuming = [a for a in atoms if not a.startswith("(?<!")]
        if not consuming or consuming[0] == r"\Z":
            return None  # a match may start with whitespace, or with anything
        cut.add(tuple(atoms))
    return re.compile(lead + _atom_trie(sorted(cut)))


def _collapse_ws(text: str, words: list[str] | None = None) -> str:
    r"""re.sub(r"\s+", " ", text) by str.split, which splits on the same whitespace, several times faster.

    `words`, when the caller has them, are text.split().
    """
    if words is None:
        words = text.split()
    if not words:
        return " " if text else ""
    out = " ".join(words)
    if text[0].isspace():
        out = " " + out
    if text[-1].isspace():
        out += " "
    return out


class _Collapsed:
    """The original span with whitespace runs collapsed, built only if a condition word needs its case."""

    __slots__ = ("_raw", "_text")

    def __init__(self, raw: str) -> None:
        self._raw = raw
        self._text: str | None = None

    def __getitem__(self, key: slice) -> str:
        if self._text is None:
            self._text = _collapse_ws(self._raw)
        return self._text[key]


def _condition(span: str, original: str | _Collapsed, starts: list[int] | None = None) -> Condition | None:
    """The stated condition; None when the dealer offers alternatives ('new or like new')."""
    hits: list[tuple[int, int, str]] = []
    for m in _CONDITION_RE.finditer_at(span, starts):
        kind = m.lastgroup
        word = m.group()
        if kind == "new" and word == "new" and _NOT_NEW_RE.match(span, m.start()):
            continue
        if kind == "new" and word == "nos" and original[m.start() : m.end()] == "nos" and _looks_french(span):
            continue
        if kind == "good" and word == "be" and original[m.start() : m.end()] != "BE":
            continue
        if kind == "used" and word in ("pre", "worn", "porte", "portee") and not _near_watch_word(span, m):
            continue
        if _OK_AFTER_RE.match(span, m.end()):
            continue
        hits.append((m.start(), m.end(), kind or ""))
    if not hits:
        return None
    kinds = [h[2] for h in hits]
    if "vintage" in kinds:
        return "vintage"
    for (_s1, e1, k1), (s2, _e2, k2) in zip(hits, hits[1:], strict=False):
        if k1 != k2 and _ALT_RE.match(span[e1:s2]):
            return None
    return hits[0][2]  # type: ignore[return-value]


def _near_watch_word(span: str, m: re.Match[str]) -> bool:
    word = m.group()
    if word == "pre":
        return bool(
            re.match(r"\s*(?:complete|owned|loved|full|set|\d|-)", span[m.end() : m.end() + 10])
        ) or m.end() == len(span)
    if word in ("porte", "portee"):
        return not re.search(r"(?:jamais|non|pas)\s*$", span[max(0, m.start() - 8) : m.start()])
    return not re.search(r"(?:un|never|not)\s*$", span[max(0, m.start() - 7) : m.start()])


def _box_papers(span: str, starts: list[int] | None = None) -> tuple[bool | None, bool | None]:
    """(box, papers): True when said present, False when said absent, None when unsaid; absence wins."""
    box: bool | None = None
    papers: bool | None = None
    for m in _BOX_PAPERS_RE.finditer_at(span, starts):
        kind = m.lastgroup
        if _OK_AFTER_RE.match(span, m.end()):
            continue
        if kind == "full":
            if _FULL_SET_EXCEPT_RE.match(span, m.start()) or (
                m.group() == "complete" and re.match(r"\s+(?:links?|bracelet)", span[m.end() : m.end() + 10])
            ):
                continue
            if m.group() in ("bnib", "lnib"):
                box = True if box is None else box
                continue
            box = True if box is None else box
            papers = True if papers is None else papers
        elif kind == "none":
            box = papers = False
        elif kind == "nobox":
            box = False
        elif kind == "papers_only":
            box = False
            papers = True if papers is None else papers
        elif kind == "box_only":
            box = True if box is None else box
            papers = False
        elif kind == "papers":
            papers = True if papers is None else papers
        elif kind == "box":
            box = True if box is None else box
    return box, papers


def _year(
    span: str,
    year_starts: list[int] | None = None,
    month_starts: list[int] | None = None,
    skip_words: bool = True,
    range_starts: list[int] | None = None,
) -> int | None:
    """The production or card year: '2018', 'carte 2021', '05/2022', '4/25'; not ranges like '2019-2021'.

    `year_starts`, `month_starts` and `range_starts` from _span_starts: where a year, a month-year or a year
    range may start (None: anywhere).
    `skip_words`: False when the text holds none of _YEAR_SKIP_WORDS.
    """
    ranges: list[tuple[int, int]] | None = None  # year ranges, found only once a year is seen
    best: tuple[int, int] | None = None
    after = 0  # as finditer: the next year is looked for after the last one
    for p in year_starts if year_starts is not None else range(len(span)):
        if p < after or (m := _YEAR_RE.match(span, p)) is None:
            continue
        after = m.end()
        if ranges is None:
            ranges = [r.span() for r in _YEAR_RANGE_RE.finditer_at(span, range_starts)]
        if _covers(ranges, m.start()) or (
            skip_words and _YEAR_SKIP_BEFORE_RE.search(span[max(0, m.start() - 22) : m.start()])
        ):
            continue
        best = (m.start(), int(m.group("y")))
        break
    # The first usable month-year wins only if it comes before the year found above: stop looking past it.
    limit = best[0] if best is not None else None
    m = _MONTH_YEAR_RE.search_at(span, month_starts, 0, limit) if month_starts != [] else None
    while m is not None:
        if ranges is None:
            ranges = [r.span() for r in _YEAR_RANGE_RE.finditer_at(span, range_starts)]
        if _covers(ranges, m.start()):
            m = _MONTH_YEAR_RE.search_at(span, month_starts, m.end(), limit)
            continue
        raw = m.group("y") or m.group("y2") or m.group("y3")
        if len(raw) == 2:
            yy = int(raw)
            year = 2000 + yy if yy <= 30 else 1900 + yy
        else:
            year = int(raw)
        if not _YEAR_MIN <= year <= _YEAR_MAX:
            m = _MONTH_YEAR_RE.search_at(span, month_starts, m.end(), limit)
            continue
        best = (m.start(), year)
        break
    return best[1] if best else None


def _size(span: str) -> float | None:
    """The case size: '41mm', '40 mm', '36.5mm'."""
    first_mm = span.find("mm")
    if first_mm < 0:
        return None
    # Every match ends with an "mm" and starts at most 5 characters before it: none starts before the first.
    m = _SIZE_RE.search(span, max(0, first_mm - 5))
    return float(m.group("s").replace(",", ".")) if m else None


def _movement(span: str, starts: list[int] | None = None) -> Movement | None:
    m = _MOVEMENT_RE.search_at(span, starts)
    return m.lastgroup if m else None  # type: ignore[return-value]


# ---------------------------------------------------------------- message type
_FRENCH_RE = re.compile(
    r"(?<![a-z])(?:je|vends|cherche|recherche|boite|papiers|etat|neuve?|avec|pour|une|des|dispo|montre|carte|prix|qui|sur)(?![a-z])"
)


def _looks_french(folded: str) -> bool:
    return len(_FRENCH_RE.findall(folded)) >= 2


_INTENT_RE = _Scanner(
    r"(?P<sale_phrase>cherche (?:un |des )?acheteurs?|looking for (?:a )?buyers?|who wants|qui veut|(?<![a-z])a vendre|for sale)"
    r"|(?<![a-z])(?P<trade>wtt|trade|trades|trading|swap|swaps|echange|echanger|exchange|troc|ft)(?![a-z])"
    r"|(?P<question>vous en pensez|vous pensez|tu en penses|tu penses|c'est normal|c'est une vraie|c'est un vrai|est-ce (?:que|une vraie)"
    r"|what do you think|thoughts on|thoughts\?|any thoughts|opinions?\b|avis\b|legit\b|real or fake|fake\?|authentic|authenticity|price check"
    r"|(?<![a-z])pc\?|how much|combien|worth it|bon deal|good deal\?|quelqu'un a deja|anyone know|does anyone know|is it normal|which one|lequel)"
    r"|(?<![a-z])(?P<wanted>wtb|iso|lf|lfs|ntq|need|needed|needs|looking for|look for|searching|seeking|cherche|recherche|recherchons|cherchons"
    r"|je cherche|qui a|quelqu'un a (?:une?|des)|qqn a (?:une?|des)|anyone have|anyone got|anyone has|who has|who have|who got|want to buy|wanted|buying"
    r"|j'achete|achete|confirmed order|sold order|confirm order|in search of|hunting|chasing)(?![a-z])"
    r"|(?<![a-z])(?P<sale>wts|selling|sell|sale|vends|vend|vendre|vente|dispo|disponible|available|avail|incoming|in stock|have|stock|offering|on hand|ready to ship|for you|brand new in|retail ready|price drop|reduced|baisse)(?![a-z])"
)
_PRICE_BEFORE_RE = re.compile(r"\d(?:k|[ ]?[$€£])|[$€£][ ]?\d|\d[.]\s|\d{4,}")
_NEGATED_TRADE_RE = re.compile(r"(?:pas d'|no |pas de |sans |not |no more )$")
_ACCESSORY_RE = re.compile(
    r"^\W*(?:a |an |this |the |some |un |une |des |ce |cette )?(?:\w+ ){0,3}?(?:strap|straps|buckle|boucle|clasp|bracelet|band|bezel insert|links?|maillons?|bracelets?|box|boite|pouch|tool|parts?|crown|dial only|movement only)\b"
)
_LEADING_FS_RE = re.compile(r"^\W*(?:fs|f/s)(?![a-z])")


_INTENT_WINDOW = (
    600  # dealers state what they do up front; scanning a whole stock list for it only costs time
)


def _intent(folded: str, starts: list[int] | None = None) -> tuple[MessageType | None, int]:
    """The first stated intent and where it is; None when the text states none.

    `starts` from _intent_starts: where an intent word may start (None: anywhere).
    """
    if _LEADING_FS_RE.match(folded):
        return "sale", 0
    m = _INTENT_RE.search_at(folded, starts)
    while m is not None:  # the first decisive word wins: scan no further than it
        intent = _intent_word(folded, m)
        if intent is not None:
            return intent, m.start()
        m = _INTENT_RE.search_at(folded, starts, m.end())
    return None, -1


def _intent_word(folded: str, m: re.Match[str]) -> MessageType | None:
    """The intent one intent-word match states, or None when its context says it states none."""
    kind = m.lastgroup
    if kind == "sale_phrase":
        return "sale"
    if kind == "trade":
        if _NEGATED_TRADE_RE.search(folded[max(0, m.start() - 8) : m.start()]):
            return None
        if m.group() == "ft" and not re.match(r"\s", folded[m.end() : m.end() + 1] or "x"):
            return None
        return "trade"
    if kind == "wanted":
        word = m.group()
        if word.startswith("need") and _PRICE_BEFORE_RE.search(folded, 0, m.start()) and m.start() > 25:
            return None  # "... need a loupe to see; $2,990": a remark inside a sale, not a request
        if word in ("iso", "lf") and folded[m.start() - 1 : m.start()] in (".", "-"):
            return None
        if _ACCESSORY_RE.match(folded[m.end() : m.end() + 40]):
            return "other"
        return "wanted"
    if kind == "question":
        return "question"
    if kind == "sale":
        word = m.group()
        if word in ("have", "stock", "sale") and not re.match(r"^\W*(?:have|stock)\W*$", folded):
            # "have" alone is a dealer's answer ("Have"); inside a sentence it rarely states a sale
            if word == "have" and not re.match(
                r"\s*(?:\d|a |an |one |this |new |bnib|mint)", folded[m.end() : m.end() + 8]
            ):
                return None
        return "sale"
    return None


# ---------------------------------------------------------------- where each scan may start
# The scans a span may need, in the order _span_starts lists their start positions.
_CONDITION, _BOX_PAPERS, _MOVEMENT, _YEAR, _MONTH_YEAR, _YEAR_RANGE = range(6)
# Per scan, a regex that matches inside a token at every offset where a match of the scan may start there.
_GATE_RES: list[re.Pattern[str] | None] = [
    _token_gate(_CONDITION_RE.pattern, lead="(?<![a-z])"),  # as every alternative
    _token_gate(_BOX_PAPERS_RE.pattern),
    _token_gate(_MOVEMENT_RE.pattern, lead="(?<![a-z])"),
    # _YEAR_RE without its look-arounds; the month-year pattern's month names may start inside a word.
    re.compile(r"19[3-9]\d|20[0-3]\d"),
    _token_gate(_MONTH_YEAR_RE.pattern),
    _token_gate(_YEAR_RANGE_RE.pattern),
]
_Offsets = tuple[tuple[int, ...], ...]  # per scan, the offsets inside a token where a match may start
_SHUT: _Offsets = ((),) * len(_GATE_RES)  # most tokens: no scan can start a match in them
_UNGATED = [scan for scan, rx in enumerate(_GATE_RES) if rx is None]  # none on CPython: scanned everywhere


def _offsets_in(gate: re.Pattern[str], token: str) -> tuple[int, ...]:
    """Every offset where `gate` matches inside the token, overlapping ones too (one search from each + 1)."""
    found: list[int] = []
    m = gate.search(token)
    while m is not None:
        found.append(m.start())
        m = gate.search(token, m.start() + 1)
    return tuple(found)


def _token_gates(token: str) -> _Offsets:
    """Where each scan may start a match inside one token (see _GATE_RES)."""
    offsets = [_offsets_in(rx, token) if rx is not None else () for rx in _GATE_RES]
    return tuple(offsets) if any(offsets) else _SHUT


def _span_starts(span: str, tokens: list[str] | None = None) -> list[list[int] | None]:
    """Per scan, the positions of the span where a match may start, in order (None: anywhere).

    A match begins with a cut prefix that lies inside one whitespace token (see _token_gate), so only the
    tokens whose offsets say so are located in the span; a scan tried at just these positions finds what it
    finds over the whole span, and one with none finds nothing.
    """
    condition: list[int] = []
    box_papers: list[int] = []
    movement: list[int] = []
    year: list[int] = []
    month_year: list[int] = []
    year_range: list[int] = []
    known = _TOKEN_FACTS  # the offsets are among each token's facts
    pos = 0
    for token in tokens if tokens is not None else span.split():
        facts = known.get(token)
        if facts is None:
            facts = _token_facts(token)
        offsets = facts.gates
        if offsets is _SHUT:
            continue
        at = _locate(span, token, pos)
        pos = at + len(token)
        in_condition, in_box_papers, in_movement, in_year, in_month_year, in_year_range = offsets
        for o in in_condition:
            condition.append(at + o)
        for o in in_box_papers:
            box_papers.append(at + o)
        for o in in_movement:
            movement.append(at + o)
        for o in in_year:
            year.append(at + o)
        for o in in_month_year:
            month_year.append(at + o)
        for o in in_year_range:
            year_range.append(at + o)
    starts: list[list[int] | None] = [condition, box_papers, movement, year, month_year, year_range]
    for scan in _UNGATED:
        starts[scan] = None
    return starts


# Where an intent word may start: a gate that keeps each alternative's word-start lookbehind, so few tokens
# open it.
_INTENT_GATE = _token_gate(_INTENT_RE.pattern, lookbehinds=True)


def _intent_starts(text: str) -> list[int] | None:
    """Where an intent word may start in the text, in order (None: anywhere)."""
    return _scan_tokens(text, text.split()).intent


# ---------------------------------------------------------------- what each token of a message may start
# The price, reference, alias and intent patterns start with a lookbehind or a class of common letters, so the
# engine would try each at nearly every position of a message. A match of each can start only at a few offsets
# inside a whitespace token, and which ones depends on the token alone (the lookbehinds see whitespace, or
# nothing, at its start). So a message is split once; each distinct token's offsets are worked out the first
# time it is seen (dealers repeat their words: after a while nearly every token is known); and each pattern is
# tried only at those positions, in text order, resuming after each match as finditer does. The matches are
# exactly finditer's. The same pass measures the digit runs that the phone mask needs.
_PHONE_RUN_CHARS = frozenset(".-()+")  # with digits and whitespace, all a phone match holds
_NO_WORDS: frozenset[str] = frozenset()  # shared: an empty frozenset is 216 bytes, and most tokens have one


class _TokenFacts:
    """Where each scan may start inside one token, the rare words it holds, and its runs of digits and .-()+
    for the phone gate: worked out once per distinct token."""

    __slots__ = (
        "aliases",
        "extra_words",
        "fuzzy",
        "gates",
        "goes_on",
        "intent",
        "keyword",
        "rare",
        "price_bare_ends",
        "prices",
        "refs",
        "run_first",
        "run_last",
        "run_longest",
        "run_whole",
        "starts",
        "year_skip_words",
    )

    def __init__(self, token: str) -> None:
        self.prices = _offsets_in(_PRICE_GATE, token)
        self.price_bare_ends = tuple(_bare_end(token, o) for o in self.prices)
        self.goes_on = _PRICE_GOES_ON_RE.match(token) is not None
        # Words that some rare checks need (none holds whitespace, so a text holds one iff a token does).
        self.keyword = any(k in token for k in _PRICE_KEYWORDS)
        self.extra_words = any(k in token for k in _EXTRA_WORDS)
        self.year_skip_words = any(k in token for k in _YEAR_SKIP_WORDS)
        # Its words ([a-z] runs never cross whitespace) that are misspelt brand or family names: most have none.
        self.fuzzy = frozenset(w for w in _WORD_RE.findall(token) if _fuzzy_alias(w) is not None) or _NO_WORDS
        self.rare = bool(self.keyword or self.extra_words or self.year_skip_words or self.fuzzy)
        self.refs = tuple((i, _ref_in_token(token, i)) for i in _ref_offsets(token))
        self.aliases = tuple(
            (m.start(), _alias_in_token(token, m.start()))
            for m in _RUN_RE.finditer(token)
            if m.group() in _ALIAS_FIRST_RUNS
        )
        self.intent = _offsets_in(_INTENT_GATE, token) if _INTENT_GATE is not None else ()
        self.starts = bool(self.prices or self.refs or self.aliases or self.intent)
        self.gates = _token_gates(token)  # where the attribute scans of a span may start (see _span_starts)
        runs = [0]  # digits per run, runs split by any other character
        for ch in token:
            if ch.isdecimal():  # what \d matches
                runs[-1] += 1
            elif ch not in _PHONE_RUN_CHARS:
                runs.append(0)
        self.run_whole = len(runs) == 1  # the token is one run: a run may go on through the next token
        self.run_first, self.run_last, self.run_longest = runs[0], runs[-1], max(runs)


def _bare_end(token: str, o: int) -> int:
    """Where the price match at offset o of a token ends when the token alone shows it is a bare number (no
    price: most matches), else -1.

    The pattern reads past a token only through a space (its `[ ]`s), so a match that ends inside its token is
    the match in the text: a longer one would take the rest of the token first, and ending there it would
    have matched in the token (what follows each `[ ]` is optional, bar a number after a currency or a first
    thousands group, and a currency alone or digits alone match too). One that ends at the token's end is the
    text's unless a space and a token that may carry it on follow (see _scan_tokens).
    """
    m = _PRICE_RE.match(token, o)
    return m.end() if m is not None and m.lastindex == 1 else -1


_TOKEN_FACTS: dict[str, _TokenFacts] = {}


def _token_facts(token: str) -> _TokenFacts:
    """A token's facts, worked out on first sight and remembered."""
    if len(_TOKEN_FACTS) > _KNOWN_TOKENS_MAX:
        _TOKEN_FACTS.clear()
    facts = _TokenFacts(token)
    if not (facts.starts or facts.rare or facts.goes_on or facts.run_whole or facts.run_longest) and (
        facts.gates is _SHUT
    ):
        facts = _NOTHING  # most words: one shared record (the table of 200,000 tokens stays small)
    _TOKEN_FACTS[token] = facts
    return facts


_NOTHING = _TokenFacts(" ")  # the facts of a token that starts nothing and holds no digit run
assert not (_NOTHING.starts or _NOTHING.rare or _NOTHING.goes_on or _NOTHING.run_whole or _NOTHING.run_longest)
assert _NOTHING.gates is _SHUT


class _TextStarts:
    """Per scan, the positions of a text where a match may start, in order (see _scan_tokens)."""

    __slots__ = (
        "aliases",
        "extra_words",
        "fuzzy",
        "intent",
        "keyword",
        "phone_digits",
        "price_bare_ends",
        "prices",
        "refs",
        "year_skip_words",
    )

    def __init__(
        self,
        prices: list[int],
        price_bare_ends: list[int],
        refs: list[tuple[int, _RefMatch]],
        aliases: list[tuple[int, _AliasMatch]],
        intent: list[int] | None,
        phone_digits: int,
        keyword: bool,
        extra_words: bool,
        year_skip_words: bool,
        fuzzy: set[str],
    ) -> None:
        self.prices = prices
        self.price_bare_ends = price_bare_ends  # per price start: where its bare-number match ends, or -1
        self.refs = refs  # each with its candidate match when the token alone gives it (see _ref_in_token)
        self.aliases = aliases  # each with its match when the token alone gives it (see _alias_in_token)
        self.intent = intent  # None: anywhere (no gate could be derived)
        self.phone_digits = phone_digits  # the most digits in a stretch of digits, whitespace and .-()+
        self.keyword = keyword  # a price keyword may be in the text
        self.extra_words = extra_words  # so may words of a shipping or deposit price (_EXTRA_WORDS)
        self.year_skip_words = year_skip_words  # and of a year that is no production year (_YEAR_SKIP_WORDS)
        self.fuzzy = fuzzy  # its words that are misspelt brand or family names


def _scan_tokens(text: str, tokens: list[str]) -> _TextStarts:
    """Where each pattern may start in the text; `tokens` are text.split()."""
    prices: list[int] = []
    bare_ends: list[int] = []
    refs: list[tuple[int, _RefMatch]] = []
    aliases: list[tuple[int, _AliasMatch]] = []
    intent: list[int] = []
    known = _TOKEN_FACTS
    run = longest = 0  # digits of the run going on through the tokens so far, and of the longest run seen
    pos = 0
    held = -1  # where the last token ends if a bare number ends there (known once the next token is seen)
    held_from = 0  # its first price start
    keyword = extra_words = year_skip_words = False
    fuzzy: set[str] = set()
    for token in tokens:
        facts = known.get(token)
        if facts is None:
            facts = _token_facts(token)
        if facts.rare:
            keyword = keyword or facts.keyword
            extra_words = extra_words or facts.extra_words
            year_skip_words = year_skip_words or facts.year_skip_words
            fuzzy |= facts.fuzzy
        if held >= 0:
            # A space and this token may carry the price pattern on past the end of the last token.
            if facts.goes_on and text[held] == " " and not text[held + 1].isspace():
                for k in range(held_from, len(bare_ends)):
                    if bare_ends[k] == held:
                        bare_ends[k] = -1
            held = -1
        if facts.run_whole:
            run += facts.run_first
        else:
            if run + facts.run_first > longest:
                longest = run + facts.run_first
            if facts.run_longest > longest:
                longest = facts.run_longest
            run = facts.run_last
        if run > longest:
            longest = run
        if not facts.starts:  # most tokens: no pattern can start a match in them
            continue
        at = _locate(text, token, pos)
        pos = at + len(token)
        if facts.prices:
            held_from = len(prices)
            ends = facts.price_bare_ends
            for k in range(len(ends)):  # by index: the compiled build runs zip as a Python call
                o, end = facts.prices[k], ends[k]
                prices.append(at + o)
                bare_ends.append(at + end if end >= 0 else -1)
                if end == len(token):
                    held = pos
        for o, found in facts.refs:
            refs.append((at + o, found))
        for o, alias in facts.aliases:
            aliases.append((at + o, alias))
        for o in facts.intent:
            intent.append(at + o)
    return _TextStarts(
        prices,
        bare_ends,
        refs,
        aliases,
        intent if _INTENT_GATE is not None else None,
        longest,
        keyword,
        extra_words,
        year_skip_words,
        fuzzy,
    )


def _mention_starts(
    folded: str, masked: str, prices: list[_Price], starts: _TextStarts
) -> tuple[list[tuple[int, _RefMatch]], list[tuple[int, _AliasMatch]]]:
    """Where references and aliases may start in `masked`, the folded text with its prices blanked, from the
    starts of the folded text.

    A token that no price touches is a token of both texts, with the same starts. The tokens a price touches
    (a stretch of the text from whitespace to whitespace) leave their unblanked pieces in `masked`: those pieces
    are scanned instead.
    """
    stretches: list[tuple[int, int]] = []
    n = len(folded)
    for p in prices:  # in text order
        lo, hi = p.start, p.end
        while lo > 0 and not folded[lo - 1].isspace():
            lo -= 1
        while hi < n and not folded[hi].isspace():
            hi += 1
        if stretches and lo <= stretches[-1][1]:
            lo = stretches[-1][0]
            stretches.pop()
        stretches.append((lo, hi))
    refs: list[tuple[int, _RefMatch]] = []
    aliases: list[tuple[int, _AliasMatch]] = []
    old_refs, old_aliases = starts.refs, starts.aliases
    r = a = 0
    for lo, hi in stretches:
        while r < len(old_refs) and old_refs[r][0] < lo:
            refs.append(old_refs[r])
            r += 1
        while r < len(old_refs) and old_refs[r][0] < hi:
            r += 1
        while a < len(old_aliases) and old_aliases[a][0] < lo:
            aliases.append(old_aliases[a])
            a += 1
        while a < len(old_aliases) and old_aliases[a][0] < hi:
            a += 1
        piece = masked[lo:hi]
        inside = _scan_tokens(piece, piece.split())
        for o, found in inside.refs:
            refs.append((lo + o, found))
        for o, alias in inside.aliases:
            aliases.append((lo + o, alias))
    refs.extend(old_refs[r:])
    aliases.extend(old_aliases[a:])
    return refs, aliases


def classify_message(text: str) -> MessageType:
    """sale | wanted | question | trade | other, from the message's own words."""
    return extract_watch_info(text).message_type


# ---------------------------------------------------------------- grouping mentions into watches
class _Group:
    __slots__ = (
        "brand", "brand_weak", "counterpart", "family", "family_weak", "firm", "first_line", "last_line",
        "mentions", "ref", "start",
    )  # fmt: skip

    def __init__(self) -> None:
        self.mentions: list[_Mention] = []
        self.brand: str | None = None
        self.brand_weak = True
        self.family: str | None = None
        self.family_weak = True
        self.ref: _Ref | None = None
        self.first_line = 0
        self.last_line = 0
        self.start = 0
        self.counterpart = False
        self.firm = False  # some mention is not weak (tracked in add, so grouping needs no second pass)

    def compatible(self, m: _Mention) -> bool:
        if m.ref is not None:
            if self.ref is not None:
                return False
            b = m.ref.brand
            return b is None or self.brand is None or self.brand == b or self.brand_weak or not m.ref.exact
        if m.weak:
            return True
        if m.brand and self.brand and m.brand != self.brand and not self.brand_weak:
            return False
        if m.family and self.family and not self.family_weak and m.family != self.family:
            return _family_related(self.family, m.family)
        if (
            m.brand
            and self.ref is not None
            and self.ref.brand
            and self.ref.brand != m.brand
            and self.ref.exact
        ):
            return False
        return True

    def add(self, m: _Mention, line: int) -> None:
        if not self.mentions:
            self.start = m.start
            self.first_line = line
        self.mentions.append(m)
        self.last_line = line
        if not m.weak:
            self.firm = True
        if m.ref is not None:
            self.ref = m.ref
            if m.ref.brand and self.brand is None:
                self.brand, self.brand_weak = m.ref.brand, True
            return
        if m.brand and (self.brand is None or (self.brand_weak and not m.weak)):
            self.brand, self.brand_weak = m.brand, m.weak
        if m.family and (self.family is None or (self.family_weak and not m.weak)):
            self.family, self.family_weak = m.family, m.weak


def _family_related(a: str, b: str) -> bool:
    """'Royal Oak' and 'Royal Oak Offshore' may name one watch; 'Daytona' and 'Submariner' cannot."""
    return a.startswith(b) or b.startswith(a)


_COUNTER_RE = re.compile(r"(?:contre|against|for an?|vs|or|ou)\W*(?:une?|a|an|la|le|my|ma|mon)?\W*$")


def _group_mentions(
    mentions: list[_Mention], line_starts: list[int], line_has_price: list[bool]
) -> list[_Group]:
    groups: list[_Group] = []
    cur: _Group | None = None
    for m in mentions:
        line = bisect.bisect_right(line_starts, m.start) - 1
        if cur is not None and line != cur.last_line:
            if cur.ref is not None or any(line_has_price[cur.first_line : line]):
                cur = None
        if cur is None or not cur.compatible(m):
            if cur is not None and m.weak and m.ref is None:
                continue  # a nickname or vague word never starts a watch of its own next to another
            cur = _Group()
            groups.append(cur)
        cur.add(m, line)
    kept = [
        g
        for g in groups
        if g.ref is not None or g.family is not None or (g.brand is not None and not g.brand_weak)
    ]
    # A watch resting only on vague words or a fuzzy guess is dropped when the message names firmer ones.
    firm = [g for g in kept if g.firm]
    return firm if firm else kept


# ---------------------------------------------------------------- the extractor
class _Attrs:
    __slots__ = ("box", "condition", "movement", "papers", "price", "size", "year")

    def __init__(self) -> None:
        self.price: _Price | None = None
        self.condition: Condition | None = None
        self.year: int | None = None
        self.size: float | None = None
        self.movement: Movement | None = None
        self.box: bool | None = None
        self.papers: bool | None = None


def _price_start(p: _Price) -> int:
    return p.start


def _attrs(
    span_folded: str,
    span_original: str,
    prices: list[_Price],
    offset: int,
    end: int,
    year_skip_words: bool = True,
) -> _Attrs:
    """The attributes stated in one span of the text; `year_skip_words` as _TextStarts'."""
    a = _Attrs()
    if offset == 0 and (not prices or prices[-1].start < end):  # every price is inside (the usual one watch)
        inside = prices
    else:  # prices are in text order: only those starting inside the span matter (a long list has many)
        lo = bisect.bisect_left(prices, offset, key=_price_start)
        hi = bisect.bisect_left(prices, end, lo, key=_price_start)
        inside = prices[lo:hi]
    for p in inside:
        if not p.extra:
            a.price = p
            break
    masked = span_folded
    for p in inside:
        s, e = p.start - offset, min(p.end, end) - offset
        masked = masked[:s] + " " * (e - s) + masked[e:]
    original: str | _Collapsed = span_original
    tokens = masked.split()  # collapsing keeps them as they are
    if "\n" in masked or "  " in masked:
        masked = _collapse_ws(masked, tokens)
        original = _Collapsed(span_original)
    # Each scan runs only where its matches may start: in most spans that is nowhere for most of them.
    starts = _span_starts(masked, tokens)
    if starts[_CONDITION] != []:
        a.condition = _condition(masked, original, starts[_CONDITION])
    if starts[_YEAR] != [] or starts[_MONTH_YEAR] != []:
        a.year = _year(masked, starts[_YEAR], starts[_MONTH_YEAR], year_skip_words, starts[_YEAR_RANGE])
    a.size = _size(masked)
    if starts[_MOVEMENT] != []:
        a.movement = _movement(masked, starts[_MOVEMENT])
    if starts[_BOX_PAPERS] != []:
        a.box, a.papers = _box_papers(masked, starts[_BOX_PAPERS])
    return a


def _mask_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Blank the given spans (keeping newlines, so lines stay lines)."""
    if not spans:
        return text
    parts: list[str] = []
    pos = 0
    for start, end in spans:
        if start < pos:
            continue
        parts.append(text[pos:start])
        chunk = text[start:end]
        parts.append(" " * len(chunk) if "\n" not in chunk else _NON_NEWLINE_RE.sub(" ", chunk))
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


_NEWLINE_RE = re.compile("\n")
_ALNUM_RE = re.compile(r"[^\W_]")
_NON_NEWLINE_RE = re.compile("[^\n]")


def _analyse(text: str) -> tuple[str, str, list[_Price], list[_Ref], list[_Mention], _TextStarts]:
    """The text cut to size, folded and phone-masked; its prices, references and mentions; its token scan."""
    original = text[:MAX_TEXT_CHARS]
    unmasked = _fold(original)
    starts = _scan_tokens(unmasked, unmasked.split())
    folded = _mask_phones(unmasked, starts.phone_digits)
    if folded != unmasked:  # a phone was blanked (rare): its tokens are gone
        starts = _scan_tokens(folded, folded.split())
    prices = _find_prices(folded, starts)
    masked = _mask_spans(folded, [(p.start, p.end) for p in prices])
    ref_starts, alias_starts = starts.refs, starts.aliases
    if prices:
        ref_starts, alias_starts = _mention_starts(folded, masked, prices, starts)
    refs = _find_refs(masked, ref_starts)
    taken = [(r.start, r.end) for r in refs]
    aliases = _find_alias_mentions(masked, original, taken, alias_starts, starts.fuzzy)
    context_brands = {m.brand for m in aliases if m.brand}
    mentions = list(aliases)
    for r in refs:
        if r.needs_context and r.brand not in context_brands:
            continue
        mentions.append(_Mention(r.start, r.end, r.brand, r.family, False, r))
    mentions.sort(key=_START)
    # A price glued to a reference ("116610LN8200") cannot be both: keep the reference.
    if refs and prices:  # refs are disjoint and in text order: find the one before each price by bisection
        ref_offsets = [r.start for r in refs]
        prices = [
            p
            for p in prices
            if (i := bisect.bisect_right(ref_offsets, p.start) - 1) < 0 or p.start >= refs[i].end
        ]
    return original, folded, prices, refs, mentions, starts


def _scale_prices(prices: list[_Price], brands: set[str]) -> None:
    """'$288.5' in a list of six-figure watches means 288,500: dealers drop the k."""
    big = any(p.amount >= 10_000 for p in prices)
    luxury = bool(brands & _LUXURY_BRANDS)
    for p in prices:
        if p.amount < 1000 and (luxury or big) and p.currency is not None and not p.extra:
            p.amount = round(p.amount * 1000, 2)
            p.scaled_k = True


# The results are built by this module from values of the exact types of their fields, every field given (the
# tests check each result against pydantic's validation of the same values). So they are put together the way
# pydantic's model_construct does, without validating again: validation was a tenth of the extractor's time.
# Models with private attributes, a post-init hook or a root would need more: they are validated instead.
_validate_listing = WatchListing.__pydantic_validator__.validate_python
_validate_info = WatchInfo.__pydantic_validator__.validate_python
_PLAIN_MODELS = all(
    not model.__private_attributes__
    and model.__pydantic_post_init__ is None
    and not model.__pydantic_root_model__
    for model in (WatchListing, WatchInfo)
)
_LISTING_FIELDS = frozenset(WatchListing.model_fields)
_INFO_FIELDS = frozenset(WatchInfo.model_fields)
_new_object = object.__new__
_set_attribute = object.__setattr__


def _constructed(model: type, values: dict[str, object], fields: frozenset[str]) -> Any:
    """An instance of a pydantic model holding `values` (all its fields), as model_construct makes it."""
    instance: Any = _new_object(model)
    _set_attribute(instance, "__dict__", values)
    _set_attribute(instance, "__pydantic_fields_set__", set(fields))
    _set_attribute(instance, "__pydantic_extra__", None)
    _set_attribute(instance, "__pydantic_private__", None)
    return instance


def _new_listing(values: dict[str, object]) -> WatchListing:
    """A WatchListing of `values`, every field in the model's order."""
    if _PLAIN_MODELS:
        listing: WatchListing = _constructed(WatchListing, values, _LISTING_FIELDS)
    else:
        listing = _validate_listing(values)
    return listing


def _info(message_type: str, confidence: float, watches: list[WatchListing]) -> WatchInfo:
    values: dict[str, object] = {"message_type": message_type, "confidence": confidence, "watches": watches}
    if _PLAIN_MODELS:
        info: WatchInfo = _constructed(WatchInfo, values, _INFO_FIELDS)
    else:
        info = _validate_info(values)
    return info


def extract_watch_info(text: str, rates: Mapping[str, float] | None = None) -> WatchInfo:
    """Everything a trader cares about in one message; never raises on odd input."""
    if not isinstance(text, str) or not text or text.isspace():  # = "not text.strip()", without the copy
        return WatchInfo()
    try:
        return _extract(text, rates)
    except (
        ValueError,
        IndexError,
        OverflowError,
        RecursionError,
    ):  # defensive: odd input must not break ingestion
        return WatchInfo()


def _extract(text: str, rates: Mapping[str, float] | None) -> WatchInfo:
    original, folded, prices, refs, mentions, starts = _analyse(text)
    if "\n" not in original:
        # One line (most messages): no header lines (they need a list below), mentions and prices on line 0.
        line_starts, n_lines, line_ends = [0], 1, [len(original)]
        line_has_price = [any(not p.extra for p in prices)]
        header_lines: set[int] = set()
        default_brand: str | None = None
        kept = mentions
    else:
        line_starts = [0] + [m.end() for m in _NEWLINE_RE.finditer(original)]
        n_lines = len(line_starts)
        line_ends = [*(s - 1 for s in line_starts[1:]), len(original)]
        line_has_price = [False] * n_lines
        for p in prices:
            if not p.extra:
                line_has_price[bisect.bisect_right(line_starts, p.start) - 1] = True
        # A header line ("Tudor neuves, carte 2024 :") states defaults for the list below it, not a watch.
        header_lines = {
            i
            for i in (range(n_lines) if ":" in folded else ())
            if folded[line_starts[i] : line_ends[i]].rstrip().endswith(":") and not line_has_price[i]
        }
        # In a list (two or more lines with references), a line naming only a brand is a header too.
        line_kinds: dict[int, set[str]] = {}
        for m in mentions:
            kind = "ref" if m.ref is not None else ("family" if m.family else "brand")
            line_kinds.setdefault(bisect.bisect_right(line_starts, m.start) - 1, set()).add(kind)
        if sum("ref" in k for k in line_kinds.values()) >= 2:
            header_lines |= {i for i, k in line_kinds.items() if k == {"brand"} and not line_has_price[i]}
        default_brand = None
        kept = []
        for m in mentions:
            line = bisect.bisect_right(line_starts, m.start) - 1
            if line in header_lines and m.ref is None and n_lines > 1:
                if m.brand and not m.weak and m.family is None:
                    default_brand = default_brand or m.brand
                    continue
            kept.append(m)
    groups = _group_mentions(kept, line_starts, line_has_price)

    window = folded[:_INTENT_WINDOW]
    intent, _pos = _intent(window, starts.intent if len(folded) <= _INTENT_WINDOW else _intent_starts(window))
    has_question = "?" in folded
    if intent == "other":
        return _info("other", 0.6, [])
    if intent is None:
        substantive = any(g.ref is not None for g in groups) or any(not p.extra for p in prices)
        if not groups or not substantive:
            if groups and has_question:
                intent = "question"
            else:
                return _info("other", 0.5 if not groups else 0.4, [])
        else:
            intent = "question" if has_question and not prices else "sale"

    brands_in_msg = {g.brand for g in groups if g.brand} | ({default_brand} if default_brand else set())
    _scale_prices(prices, brands_in_msg)
    cur_counts: dict[str, int] = {}
    for p in prices:
        if p.currency and not p.extra:
            cur_counts[p.currency] = cur_counts.get(p.currency, 0) + 1
    # The most frequent currency; max keeps the first seen among equals, as Counter.most_common does.
    default_currency = max(cur_counts, key=cur_counts.__getitem__) if cur_counts else None

    # Which text belongs to which watch.
    multi_line = len({g.first_line for g in groups}) > 1
    spans: list[tuple[int, int]] = []
    context: list[tuple[int, int]] = []
    if len(groups) <= 1:
        spans = [(0, len(original))]
    else:
        group_lines = {i for g in groups for i in range(g.first_line, g.last_line + 1)}
        for gi, g in enumerate(groups):
            first_on_line = gi == 0 or groups[gi - 1].last_line != g.first_line
            start = line_starts[g.first_line] if first_on_line else g.start
            if gi + 1 < len(groups):
                nxt = groups[gi + 1]
                end = (
                    g.start
                    if False
                    else (nxt.start if nxt.first_line == g.last_line else line_ends[g.last_line])
                )
                if nxt.first_line != g.last_line:
                    # Price-only lines right after a watch line belong to it.
                    li = g.last_line + 1
                    while li < nxt.first_line and line_has_price[li] and li not in group_lines:
                        end = line_ends[li]
                        li += 1
            else:
                end = line_ends[g.last_line]
                li = g.last_line + 1
                while li < n_lines and (line_has_price[li] or not multi_line) and li not in header_lines:
                    end = line_ends[li]
                    li += 1
            spans.append((start, end))
            # Trade counterpart: "... contre PP Nautilus 5711/1A, ou vente 78k€": that watch is wanted in return.
            if gi > 0 and not first_on_line and intent == "trade":
                gap = folded[max(groups[gi - 1].start, g.start - 30) : g.start]
                if _COUNTER_RE.search(gap):
                    g.counterpart = True
        covered = [False] * n_lines
        for s, e in spans:
            for li in range(
                bisect.bisect_right(line_starts, s) - 1, bisect.bisect_right(line_starts, max(s, e - 1))
            ):
                covered[li] = True
        context = [(line_starts[i], line_ends[i]) for i in range(n_lines) if not covered[i]]

    defaults = _Attrs()
    for s, e in context:
        if _ALNUM_RE.search(folded, s, e) is None:
            continue  # a separator or blank line ("———"): every attribute needs a letter or a digit
        a = _attrs(folded[s:e], original[s:e], [], s, e, starts.year_skip_words)
        defaults.condition = defaults.condition or a.condition
        defaults.year = defaults.year or a.year
        for attr in ("box", "papers"):
            val = getattr(a, attr)
            if val is not None and (getattr(defaults, attr) is None or val is False):
                setattr(defaults, attr, val)

    watches: list[WatchListing] = []
    confidences: list[float] = []
    pending_attrs: _Attrs | None = None
    for gi in range(len(groups) - 1, -1, -1):
        g = groups[gi]
        s, e = spans[gi] if len(groups) > 1 else spans[0]
        a = _attrs(folded[s:e], original[s:e], prices, s, e, starts.year_skip_words)
        if g.counterpart:
            pending_attrs = a
            a = _Attrs()
        elif pending_attrs is not None:
            a.price = a.price or pending_attrs.price
            pending_attrs = None
        watches.append(_listing(g, a, defaults, default_brand, default_currency, original[s:e], rates))
        confidences.append(_confidence(g, a, intent))
    watches.reverse()
    confidences.reverse()
    if len(groups) == 0:
        return _info(intent, 0.5, [])
    confidence = round(sum(confidences) / len(confidences), 3)
    return _info(intent, min(0.99, max(0.0, confidence)), watches)


def _listing(
    g: _Group,
    a: _Attrs,
    defaults: _Attrs,
    default_brand: str | None,
    default_currency: str | None,
    line: str,
    rates: Mapping[str, float] | None,
) -> WatchListing:
    brand = g.brand or default_brand
    if brand is None and g.family:
        brand = _FAMILY_BRAND.get(g.family)
    family = g.family
    ref = g.ref
    if ref is not None and ref.family and (ref.brand is None or ref.brand == brand):
        family = ref.family
    elif ref is not None and ref.brand and ref.brand == brand and ref.family is None and ref.exact:
        family = g.family if not g.family_weak else g.family
    if brand and family and _FAMILY_BRAND.get(family, brand) != brand and ref is None:
        family = family if g.brand is None else family
    if brand == "Richard Mille":
        family = None
    price = a.price.amount if a.price else None
    currency = (a.price.currency or default_currency) if a.price else None
    return _new_listing(
        {
            "brand": brand,
            "model": family,
            "reference": ref.ref if ref else None,
            "price": price,
            "currency": currency,
            "price_eur": to_eur(price, currency, rates),
            "condition": a.condition or defaults.condition,
            "year": a.year or defaults.year,
            "size_mm": a.size,
            "movement": a.movement,
            "box": a.box if a.box is not None else defaults.box,
            "papers": a.papers if a.papers is not None else defaults.papers,
            "text": line.strip(),
        }
    )


def _confidence(g: _Group, a: _Attrs, intent: str | None) -> float:
    """High when brand, reference and price agree; lower as facts go missing or only rest on shape."""
    score = 0.3
    if g.brand:
        score += 0.15 if not g.brand_weak else 0.1
    if g.ref is not None:
        score += 0.15 if g.ref.exact else 0.1
        if g.ref.brand and g.brand and g.ref.brand == g.brand:
            score += 0.1
    if g.family:
        score += 0.05
    if a.price is not None:
        score += 0.15
    if intent in ("sale", "wanted", "trade"):
        score += 0.05
    return min(0.99, score)


# ---------------------------------------------------------------- helpers for search
def find_brands(text: str) -> list[str]:
    """Every brand named (alias, typo, nickname, family) or implied by a reference, in order, no repeats."""
    _original, _folded, _prices, _refs, mentions, _starts = _analyse(text)
    seen: list[str] = []
    for m in mentions:
        brand = m.brand or (_FAMILY_BRAND.get(m.family) if m.family else None)
        if brand and brand not in seen:
            seen.append(brand)
    return seen


def find_brand(text: str) -> str | None:
    """The first brand named or implied in the text ('qui cherche une Daytona' -> Rolex)."""
    brands = find_brands(text)
    return brands[0] if brands else None


def find_references(text: str) -> list[tuple[str, str | None]]:
    """References in the text as (reference upper-cased as written, brand or None)."""
    _original, _folded, _prices, refs, mentions, _starts = _analyse(text)
    named = {m.brand for m in mentions if m.brand}
    return [(r.ref, r.brand) for r in refs if not r.needs_context or r.brand in named]


def canonical_model(text: str, brand: str | None = None) -> str | None:
    """The canonical model family named in the text ('sub' -> Submariner, 'Pepsi' -> GMT-Master II)."""
    _original, _folded, _prices, _refs, mentions, _starts = _analyse(text)
    fallback: str | None = None
    for m in mentions:
        family = m.family or (m.ref.family if m.ref else None)
        if not family:
            continue
        fam_brand = m.brand or _FAMILY_BRAND.get(family)
        if brand is not None and fam_brand != brand:
            continue
        if not m.weak:
            return family
        fallback = fallback or family
    return fallback


# ---------------------------------------------------------------- the compiled build, when current
# src/native_extractor.py compiles a copy of this very file with mypyc (about 1.7x faster). When its build is
# current, the public functions are the compiled ones; otherwise (no compiler, an edited source) these serve.
# The copy imports under another name, so it never looks for itself (and mypyc never follows this import).
if __name__ == "src.watch_info_extractor":
    import importlib

    _native = importlib.import_module("src.native_extractor").load()
    if _native is not None:
        canonical_model = _native.canonical_model
        classify_message = _native.classify_message
        extract_watch_info = _native.extract_watch_info
        find_brand = _native.find_brand
        find_brands = _native.find_brands
        find_references = _native.find_references
        normalize_reference = _native.normalize_reference
        parse_prices = _native.parse_prices
        reference_info = _native.reference_info
    IMPLEMENTATION = "mypyc" if _native is not None else "python"
