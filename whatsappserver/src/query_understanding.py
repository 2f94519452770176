"""Query understanding: turn "qui vend une Daytona 116500LN blanche sous 30k ?" into filters and ranking terms.

What a query states becomes a `SearchFilters` field (intent, brand, model, reference, price bounds in EUR,
condition, years, box and papers); the words left over rank by keyword match. Brand, model, nickname and
reference come from the message extractor's own helpers, so a query and a listing are read the same way.
Price bounds, intent, years and box/papers phrasing are query grammar and live here.

Conventions (documented because a dealer would guess them differently):
- "qui vend / who sells / for sale / dispo / WTS" -> sale listings; "qui cherche / who is looking / WTB / ISO"
  -> wanted listings. A bare "je cherche / looking for" states no intent: the user wants the watch, and the
  results show both sides unless a type is given.
- A bare price bound without a currency is in EUR; under 1,000 it means thousands ("sous 10" = 10k).
- A bare year is that year; "2018+", "after 2018", "depuis 2018", "2018-2021" give ranges.
- "full set / complet / B&P / boîte et papiers" -> box and papers; "watch only / naked / montre seule" -> neither.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from src.fx import to_eur
from src.store.base import SearchFilters
from src.watch_info_extractor import canonical_model, find_brand, find_references, reference_info
from src.watch_models import normalize_reference

__all__ = [
    "PriceBound",
    "QueryUnderstanding",
    "fold",
    "merge_filters",
    "parse_price_bounds",
    "understand_query",
]


def fold(text: str) -> str:
    """Lower-case, accents removed, typographic quotes and spaces made plain: one form for every regex."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return plain.replace("\u2019", "'").replace("\u00a0", " ").replace("\u202f", " ")


# -- prices ------------------------------------------------------------------------------------------

_CUR_PRE = r"(?P<{n}pre>€|\$|£|us\$|chf|eur|usd|gbp|hkd|aed|sgd)"
_AMOUNT = r"(?P<{n}amt>\d{{1,3}}(?:[ .,'](?=\d{{3}}\b)\d{{3}})+(?:[.,]\d{{1,2}})?|\d+(?:[.,]\d+)?)"
_MULT = r"(?P<{n}mult>\s?(?:k|m)(?![a-z]))?"
_CUR_POST = (
    r"(?P<{n}post>\s?(?:€|\$|£|euros?|eur|e(?![a-z])|usd|dollars?|chf|francs?|gbp|livres?|pounds?"
    r"|hkd|aed|dirhams?|sgd)(?![a-z]))?"
)


def _money(name: str) -> str:
    return (
        rf"(?:{_CUR_PRE.format(n=name)}\s?)?{_AMOUNT.format(n=name)}{_MULT.format(n=name)}"
        rf"{_CUR_POST.format(n=name)}"
    )


_CURRENCY_WORDS = {
    "€": "EUR", "eur": "EUR", "euro": "EUR", "euros": "EUR", "e": "EUR",
    "$": "USD", "us$": "USD", "usd": "USD", "dollar": "USD", "dollars": "USD",
    "£": "GBP", "gbp": "GBP", "livre": "GBP", "livres": "GBP", "pound": "GBP", "pounds": "GBP",
    "chf": "CHF", "franc": "CHF", "francs": "CHF",
    "hkd": "HKD", "aed": "AED", "dirham": "AED", "dirhams": "AED", "sgd": "SGD",
}  # fmt: skip

_UPPER_WORDS = (
    r"sous|moins de|en dessous de|au dessous de|inferieur a|pas plus de|au plus|max(?:imum)?|budget(?: max)?"
    r"|jusqu'? ?a|under|below|less than|lower than|cheaper than|at most|no more than|up to|<=?|≤"
)
_LOWER_WORDS = (
    r"plus de|au moins|superieur a|a partir de|min(?:imum)?|over|above|more than|at least|starting at"
    r"|from|>=?|≥"
)
_RANGE_OPEN = r"entre|between|from|de"
_RANGE_JOIN = r"et|and|to|a|-|–"

_UPPER = re.compile(rf"(?<![\w<>])(?:{_UPPER_WORDS})\s*{_money('a')}(?![\w.,]*\d)")
_LOWER = re.compile(rf"(?<![\w<>])(?:{_LOWER_WORDS})\s*{_money('a')}(?![\w.,]*\d)")
_RANGE = re.compile(
    rf"(?:(?<!\w)(?:{_RANGE_OPEN})\s+)?{_money('a')}\s*(?:{_RANGE_JOIN})\s*{_money('b')}(?![\w.,]*\d)"
)


@dataclass(slots=True, frozen=True)
class PriceBound:
    """One side of a price constraint as the user wrote it, and in EUR."""

    amount: float
    currency: str
    eur: float


def _amount(match: re.Match[str], name: str) -> tuple[float, bool, str | None]:
    """(value, had a k/m multiplier or currency, currency) of one money group."""
    raw = match.group(f"{name}amt")
    mult = (match.group(f"{name}mult") or "").strip()
    pre = match.group(f"{name}pre")
    post = (match.group(f"{name}post") or "").strip()
    cleaned = raw.replace(" ", "").replace("'", "")
    if re.fullmatch(r"\d{1,3}(?:[.,]\d{3})+", cleaned):
        cleaned = cleaned.replace(".", "").replace(",", "")
    elif re.fullmatch(r"\d{1,3}(?:[.,]\d{3})+[.,]\d{1,2}", cleaned):
        cleaned = re.sub(r"[.,](?=\d{3})", "", cleaned).replace(",", ".")
    else:
        cleaned = cleaned.replace(",", ".")
    try:
        value = float(cleaned)
    except ValueError:
        return 0.0, False, None
    if mult == "k":
        value *= 1_000
    elif mult == "m":
        value *= 1_000_000
    currency = _CURRENCY_WORDS.get(pre or "") or _CURRENCY_WORDS.get(post)
    return value, bool(mult or currency), currency


def _looks_like_year(value: float, marked: bool) -> bool:
    return not marked and value.is_integer() and 1900 <= value <= 2039


def _bound(value: float, currency: str | None, rates: Mapping[str, float] | None) -> PriceBound:
    currency = currency or "EUR"
    if value < 1_000:  # dealer shorthand: "sous 10" is 10k
        value *= 1_000
    eur = to_eur(value, currency, rates)
    return PriceBound(amount=value, currency=currency, eur=round(eur if eur is not None else value, 2))


def parse_price_bounds(
    text: str, rates: Mapping[str, float] | None = None
) -> tuple[PriceBound | None, PriceBound | None, list[tuple[int, int]]]:
    """(lower bound, upper bound, consumed spans) of a folded query; a missing currency means EUR."""
    low: PriceBound | None = None
    high: PriceBound | None = None
    spans: list[tuple[int, int]] = []

    for match in _RANGE.finditer(text):
        a, a_marked, a_cur = _amount(match, "a")
        b, b_marked, b_cur = _amount(match, "b")
        explicit = re.match(rf"(?:{_RANGE_OPEN})\s", match.group(0)) is not None
        if not (a_marked or b_marked) and not explicit:
            continue  # "5711-1A" or "126610 2021": not a price range
        if _looks_like_year(a, a_marked) and _looks_like_year(b, b_marked):
            continue  # "between 2018 and 2021" is a year range
        a_mult = (match.group("amult") or "").strip()
        b_mult = (match.group("bmult") or "").strip()
        if not a_mult and b_mult and a < 1_000:  # "8-10k": the multiplier covers both ends
            a *= 1_000 if b_mult == "k" else 1_000_000
        currency = a_cur or b_cur
        low, high = _bound(min(a, b), currency, rates), _bound(max(a, b), currency, rates)
        spans.append(match.span())
        break

    def _free(span: tuple[int, int]) -> bool:
        return all(span[1] <= s or span[0] >= e for s, e in spans)

    for pattern, is_upper in ((_UPPER, True), (_LOWER, False)):
        for match in pattern.finditer(text):
            if not _free(match.span()):
                continue
            value, marked, currency = _amount(match, "a")
            # "sous 2000" is a price; "from 2018" is a year.
            if value <= 0 or (not is_upper and _looks_like_year(value, marked)):
                continue
            bound = _bound(value, currency, rates)
            if is_upper:
                high = bound
            else:
                low = bound
            spans.append(match.span())
            break
    return low, high, spans


# -- intent, condition, box and papers, years ---------------------------------------------------------

_WANTED = re.compile(
    r"\b(?:qui (?:cherche|recherche|veut|voudrait|achete|est acheteur)|who(?:'s| is)? (?:looking|searching|"
    r"wants|buying|needs)|who wants|wtb|iso|in search of|wanted|acheteurs?|buyers?|demandes?)\b"
)
_SALE = re.compile(
    r"\b(?:qui (?:vend|a|propose|possede)|who(?:'s| is)? (?:selling|sells|has|offers|offering)|who sells|"
    r"who has|for sale|a vendre|en vente|wts|selling|sellers?|vendeurs?|vends?|vendre|offres?|"
    r"dispos?|disponibles?|available|in stock|en stock)\b"
)
_TRADE = re.compile(r"\b(?:wtt|trades?|echanges?|swaps?|troc)\b")

_CONDITIONS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "excellent",
        re.compile(r"\b(?:mint|excellent(?: etat| condition)?|comme neuve?|like new|lnib|etat neuf)\b"),
    ),
    ("new", re.compile(r"\b(?:neuf|neuve|neufs|neuves|new|bnib|unworn|brand new|jamais portee?)\b")),
    ("good", re.compile(r"\b(?:tbe|tres bon etat|bon etat|very good|good condition|good)\b")),
    ("used", re.compile(r"\b(?:used|occasion|portee?|pre-?owned|worn)\b")),
    ("vintage", re.compile(r"\bvintage\b")),
)

_FULL_SET = re.compile(
    r"\b(?:full ?-?sets?|fs|complete(?: set)?|complet(?:e|es)?|box (?:and|&|et|\+) papers|b ?& ?p|bnp"
    r"|boites? (?:et|&|\+) (?:papiers|carte)|boite papiers|avec (?:boite et )?papiers|watch box (?:and|&) papers)"
    r"(?![\w&])"
)
_WATCH_ONLY = re.compile(r"\b(?:watch only|naked|montre seule|nue|sans boite ni papiers|no box no papers)\b")
_NO_PAPERS = re.compile(r"\b(?:sans papiers|no papers|without papers|pas de papiers|no card|sans carte)\b")
_NO_BOX = re.compile(r"\b(?:sans boite|no box|without box|pas de boite)\b")
_PAPERS = re.compile(r"\b(?:avec papiers|with papers|papers|papiers|w/ ?c|with card|carte|card|garantie)\b")
_BOX = re.compile(r"\b(?:avec boite|with box|box|boite)\b")

_YEAR = r"(19[4-9]\d|20[0-3]\d)"
_YEAR_RANGE = re.compile(rf"\b(?:entre|between|from|de)?\s*{_YEAR}\s*(?:et|and|to|a|-|–)\s*{_YEAR}\b")
_YEAR_MIN = re.compile(
    rf"(?:\b(?:apres|after|since|depuis|from|a partir de|newer than|plus recente? que)\s+{_YEAR}\b"
    rf"|\b{_YEAR}\s*(?:\+|ou plus|or newer|and up|et plus))"
)
_YEAR_MAX = re.compile(rf"\b(?:avant|before|until|jusqu'? ?en|older than|plus ancienne? que)\s+{_YEAR}\b")
_YEAR_EXACT = re.compile(rf"(?<![\w.,/-]){_YEAR}(?![\w.,/-])")

_PRICE_QUESTION = re.compile(
    r"\b(?:prix|price|prices|combien|how much|cote|valeur|value|moyen(?:ne)?|average|median|mediane|"
    r"market|marche)\b"
)

_STOPWORDS = frozenset(
    """
    a an and any are as at be by do does for from has have i in is it me my of on or some the to with what
    which who whos where anyone someone please pls thanks hi hello watch watches looking look need want
    au aux avec ce ces cette d de des du en est et il ils j je l la le les ma me mes moi mon ne ou par pas
    pour qu que quel quelle qui quelqu quelquun sa se ses son sur ta te un une vous y cherche recherche
    montre montres merci bonjour salut svp stp ref reference
    """.split()
)
_WORD = re.compile(r"[a-z0-9][a-z0-9&-]*")
_BARE_REFERENCE = re.compile(r"(?<![\w.,/-])(\d{3,6}[a-z]{0,4}(?:/\d{0,2}[a-z]{0,3})?)(?![\w.,/-])")


@dataclass(slots=True)
class QueryUnderstanding:
    """What a query states (as filters) and what is left to rank with."""

    text: str
    filters: SearchFilters
    references: list[str] = field(default_factory=list)
    brand: str | None = None
    model: str | None = None
    nickname: str | None = None
    min_price: PriceBound | None = None
    max_price: PriceBound | None = None
    keywords: list[str] = field(default_factory=list)
    price_question: bool = False

    def stated(self) -> dict[str, Any]:
        """The filters the query set, for display and for `why`."""
        values = {f.name: getattr(self.filters, f.name) for f in fields(self.filters)}
        out = {k: v for k, v in values.items() if v is not None}
        if self.references:
            out["references"] = list(self.references)
        if self.brand and "brand" not in out:
            out["brand_named"] = self.brand
        if self.model and "model" not in out:
            out["model_named"] = self.model
        if self.nickname:
            out["nickname"] = self.nickname
        return out


def _find_spans(pattern: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text)]


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """Replace consumed spans with spaces so later patterns and keywords skip them."""
    chars = list(text)
    for start, end in spans:
        for i in range(start, min(end, len(chars))):
            chars[i] = " "
    return "".join(chars)


def _references(text: str) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for reference, brand in find_references(text):
        key = normalize_reference(reference)
        if key and key not in seen:
            seen.add(key)
            found.append((reference.upper().replace(" ", ""), brand))
    return found


def understand_query(query: str, rates: Mapping[str, float] | None = None) -> QueryUnderstanding:
    """Read a French or English query into filters (what it states) and keywords (what is left to rank)."""
    text = fold(query)
    filters = SearchFilters()

    references = _references(query)
    rest = text
    for reference, _ in references:
        # Blank the reference (as written, any separators) so its digits are not read as a price or year.
        pattern = r"[\s./-]?".join(re.escape(ch) for ch in normalize_reference(reference).lower())
        rest = re.sub(pattern, " ", rest)

    low, high, price_spans = parse_price_bounds(rest, rates)
    rest = _blank(rest, price_spans)
    if low is not None:
        filters.min_price_eur = low.eur
    if high is not None:
        filters.max_price_eur = high.eur

    if _WANTED.search(rest):
        filters.message_type = "wanted"
    elif _TRADE.search(rest):
        filters.message_type = "trade"
    elif _SALE.search(rest):
        filters.message_type = "sale"
    rest = _blank(rest, _find_spans(_WANTED, rest) + _find_spans(_TRADE, rest) + _find_spans(_SALE, rest))

    if _WATCH_ONLY.search(rest):
        filters.box, filters.papers = False, False
        rest = _blank(rest, _find_spans(_WATCH_ONLY, rest))
    if _FULL_SET.search(rest):
        filters.box, filters.papers = True, True
        rest = _blank(rest, _find_spans(_FULL_SET, rest))
    if _NO_PAPERS.search(rest):
        filters.papers = False
        rest = _blank(rest, _find_spans(_NO_PAPERS, rest))
    if _NO_BOX.search(rest):
        filters.box = False
        rest = _blank(rest, _find_spans(_NO_BOX, rest))
    if filters.papers is None and _PAPERS.search(rest):
        filters.papers = True
        rest = _blank(rest, _find_spans(_PAPERS, rest))
    if filters.box is None and _BOX.search(rest):
        filters.box = True
        rest = _blank(rest, _find_spans(_BOX, rest))

    for condition, pattern in _CONDITIONS:
        if pattern.search(rest):
            filters.condition = condition
            rest = _blank(rest, _find_spans(pattern, rest))
            break

    if (m := _YEAR_RANGE.search(rest)) is not None:
        first, second = sorted((int(m.group(1)), int(m.group(2))))
        filters.min_year, filters.max_year = first, second
        rest = _blank(rest, [m.span()])
    else:
        if (m := _YEAR_MIN.search(rest)) is not None:
            filters.min_year = int(m.group(1) or m.group(2))
            rest = _blank(rest, [m.span()])
        if (m := _YEAR_MAX.search(rest)) is not None:
            filters.max_year = int(m.group(1))
            rest = _blank(rest, [m.span()])
        if filters.min_year is None and filters.max_year is None:
            if (m := _YEAR_EXACT.search(rest)) is not None:
                filters.min_year = filters.max_year = int(m.group(1))
                rest = _blank(rest, [m.span()])

    if not references:
        # A bare catalogue reference ("prix moyen d'une 5711") that the extractor wants context for.
        for m in _BARE_REFERENCE.finditer(rest):
            known_brand, _family = reference_info(m.group(1).upper())
            if known_brand:
                references.append((m.group(1).upper(), known_brand))
                rest = _blank(rest, [m.span()])
                break

    brand = find_brand(query)
    model = canonical_model(query)
    if references and model is None:
        model = reference_info(references[0][0])[1]
    nickname = None
    if references:
        # A reference is the most precise thing a query can state: it alone filters, so a listing whose
        # brand or model the extractor missed is still found; brand and model only help the ranking.
        filters.reference = normalize_reference(references[0][0])
        brand = brand or references[0][1]
    else:
        filters.brand = brand
        filters.model = model
    if model and fold(model) not in text and fold(model).replace("-", " ") not in text:
        nickname = _nickname_word(text, model)

    price_question = bool(_PRICE_QUESTION.search(rest))
    consumed = {fold(w) for w in re.split(r"[\s-]+", f"{brand or ''} {model or ''}") if w}
    keywords: list[str] = [nickname] if nickname else []
    for raw in _WORD.findall(rest):
        word = raw.strip("-")
        if len(word) < 2 or word in _STOPWORDS or word in consumed or _PRICE_QUESTION.fullmatch(word):
            continue
        # Brand aliases and model names ("ap", "sub") are enforced by the filters: no ranking signal.
        if (brand and find_brand(word) == brand) or (
            model and canonical_model(word) == model and word != nickname
        ):
            continue
        keywords.append(word)
    return QueryUnderstanding(
        text=query,
        filters=filters,
        references=[normalize_reference(r) for r, _ in references],
        brand=brand,
        model=model,
        nickname=nickname,
        min_price=low,
        max_price=high,
        keywords=list(dict.fromkeys(keywords)),
        price_question=price_question,
    )


def _nickname_word(text: str, model: str) -> str | None:
    """The query word that named the model without spelling it ("pepsi" -> GMT-Master II), if one does."""
    for word in _WORD.findall(text):
        if word not in _STOPWORDS and not any(ch.isdigit() for ch in word) and canonical_model(word) == model:
            return word
    return None


def merge_filters(understood: SearchFilters, overrides: SearchFilters | None) -> SearchFilters:
    """Explicit parameters win over what the query says, field by field."""
    if overrides is None:
        return replace(understood)
    changes = {
        f.name: getattr(overrides, f.name)
        for f in fields(overrides)
        if getattr(overrides, f.name) is not None
    }
    return replace(understood, **changes)
