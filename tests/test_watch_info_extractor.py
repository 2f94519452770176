"""The watch extractor: the seed example, every price form and trap, lists, and robustness on any input."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from src.fx import DEFAULT_EUR_RATES, RATES_DATE, to_eur
from src.watch_info_extractor import (
    WatchInfo,
    WatchListing,
    canonical_model,
    extract_watch_info,
    find_brand,
    find_references,
    normalize_reference,
    parse_prices,
    reference_info,
)


def test_seed_example() -> None:
    info = extract_watch_info("Vends Rolex Submariner 116610LN de 2018, excellent état, 8200€")
    assert info.message_type == "sale"
    assert info.confidence >= 0.9
    (w,) = info.watches
    assert (w.brand, w.model, w.reference) == ("Rolex", "Submariner", "116610LN")
    assert (w.price, w.currency, w.condition, w.year) == (8200, "EUR", "excellent", 2018)
    assert w.price_eur == 8200


@pytest.mark.parametrize(
    ("text", "amount", "currency"),
    [
        ("8200€", 8200, "EUR"),
        ("8.200 €", 8200, "EUR"),
        ("8 200€", 8200, "EUR"),
        ("8,2k€", 8200, "EUR"),
        ("8k2 €", 8200, "EUR"),
        ("€10.3k", 10300, "EUR"),
        ("€148.500,-", 148500, "EUR"),
        ("12'500 CHF", 12500, "CHF"),
        ("CHF 12\u2019500", 12500, "CHF"),
        ("£6,750", 6750, "GBP"),
        ("$15,750 + label", 15750, "USD"),
        ("9.5k USD", 9500, "USD"),
        ("1.26m HKD", 1_260_000, "HKD"),
        ("$435k USDT", 435_000, "USDT"),
        ("$840000 HKD", 840_000, "HKD"),
        ("3200e", 3200, "EUR"),
        ("19 900 euros", 19900, "EUR"),
    ],
)
def test_price_forms(text: str, amount: float, currency: str) -> None:
    assert parse_prices(text)[0] == (amount, currency)


def test_bare_price_after_keyword() -> None:
    info = extract_watch_info("Day-Date 40 228239 bleu, 2021, full set, TBE\nprix: 41 000")
    assert info.watches[0].price == 41000


@pytest.mark.parametrize(
    "text",
    [
        "Rolex Submariner 41mm 2020",
        "Day-Date 18k yellow gold 228238",
        "Seamaster 300m diver",
        "RDV le 15/03 à 14h",
        "appelez moi au 06 12 34 56 78",
        "Rolex 126610LN",
        "Omega 311.30.42.30.01.005",
    ],
)
def test_price_traps(text: str) -> None:
    assert parse_prices(text) == []
    for w in extract_watch_info(text).watches:
        assert w.price is None


def test_year_and_size_are_not_prices_and_are_read() -> None:
    (w,) = extract_watch_info("WTS Tudor Pelagos 25600TB 42mm 2020 full set 3 300€").watches
    assert (w.year, w.size_mm, w.price, w.box, w.papers) == (2020, 42, 3300, True, True)


def test_shipping_and_deposit_are_not_the_price() -> None:
    (w,) = extract_watch_info(
        "Vends Tudor Black Bay GMT 79830RB, 2021, full set, TBE. 3 150€ + 25€ de port"
    ).watches
    assert w.price == 3150
    info = extract_watch_info(
        "Vends Daytona 126500LN neuve 2024 full set 31 500€. Acompte de 3000€ pour réserver"
    )
    assert info.watches[0].price == 31500


@pytest.mark.parametrize(
    ("ref", "brand", "model"),
    [
        ("126610LN", "Rolex", "Submariner"),
        ("126710BLRO", "Rolex", "GMT-Master II"),
        ("116500LN", "Rolex", "Daytona"),
        ("311.30.42.30.01.005", "Omega", "Speedmaster"),
        ("5711/1A-010", "Patek Philippe", "Nautilus"),
        ("15500ST.OO.1220ST.01", "Audemars Piguet", "Royal Oak"),
        ("15500ST", "Audemars Piguet", "Royal Oak"),
        ("M79030N-0001", "Tudor", "Black Bay"),
        ("WSSA0018", "Cartier", "Santos"),
        ("IW500705", "IWC", None),
        ("PAM01312", "Panerai", None),
        ("RM67-01", "Richard Mille", None),
        ("SBGA211", "Grand Seiko", None),
    ],
)
def test_reference_shapes(ref: str, brand: str, model: str | None) -> None:
    got_brand, got_model = reference_info(ref)
    assert got_brand == brand
    if model is not None:
        assert got_model == model
    assert find_references(f"dispo {ref} full set") == [(ref.upper(), brand)]


def test_brand_aliases_typos_and_nicknames() -> None:
    assert find_brand("Qui a une Rollex Yacht Master ?") == "Rolex"
    assert find_brand("Omaga Constellation des années 70") == "Omega"
    assert find_brand("Audemar Piguet Royal Oak") == "Audemars Piguet"
    assert find_brand("JLC Reverso") == "Jaeger-LeCoultre"
    assert find_brand("qui cherche une Daytona") == "Rolex"
    assert canonical_model("Batman") == "GMT-Master II"
    assert canonical_model("Speedy Moonwatch") == "Speedmaster"
    assert canonical_model("AP RO 15500ST") == "Royal Oak"
    assert canonical_model("BB58 bleue") == "Black Bay"
    assert normalize_reference("5711/1A-010") == "57111A010"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("WTS 126610LN 2023 full set $14,500", "sale"),
        ("Dispo Pepsi 126710BLRO 2024 neuve 19 900€", "sale"),
        ("WTB 5711/1A full set", "wanted"),
        ("NTQ 228398 TBR brand new only", "wanted"),
        ("Je cherche une Speedy Moonwatch, budget 6 000€", "wanted"),
        ("Échange AP Royal Oak 15202ST contre PP Nautilus 5711/1A", "trade"),
        ("Vous en pensez quoi ? Cartier Santos WSSA0018 à 6 500€", "question"),
        ("Bien reçu le virement, j'envoie demain", "other"),
        ("need a strap for 226659", "other"),
    ],
)
def test_message_types(text: str, kind: str) -> None:
    assert extract_watch_info(text).message_type == kind


def test_box_and_papers() -> None:
    def bp(text: str) -> tuple[bool | None, bool | None]:
        w = extract_watch_info(text).watches[0]
        return w.box, w.papers

    assert bp("WTS 126610LN full set $14k") == (True, True)
    assert bp("WTS 126610LN B&P $14k") == (True, True)
    assert bp("Vends 126610LN boîte et papiers 12k€") == (True, True)
    assert bp("WTS 126610LN watch only $12k") == (False, False)
    assert bp("WTS 16610 Submariner naked $9k") == (False, False)
    assert bp("Vends 126610LN sans papiers 11k€") == (True, False)
    assert bp("WTS 126610LN w/c 2022 $13k") == (False, True)
    assert bp("WTS 126610LN 2022 $13k") == (None, None)


def test_conditions() -> None:
    def cond(text: str) -> str | None:
        return extract_watch_info(text).watches[0].condition

    assert cond("WTS 126610LN BNIB $14k") == "new"
    assert cond("Vends 126610LN jamais porté 13k€") == "new"
    assert cond("WTS 126610LN LNIB $13k") == "excellent"
    assert cond("Vends 126610LN comme neuve 13k€") == "excellent"
    assert cond("Vends 126610LN TBE 12k€") == "good"
    assert cond("WTS 126610LN pre-owned $12k") == "used"
    assert cond("Vends 5513 Submariner vintage 15k€") == "vintage"
    assert cond("WTB 126610LN new or like new") is None


def test_stock_list_gives_one_watch_per_line() -> None:
    text = (
        "📋 Stock dispo cette semaine :\n\n126610LN 2023 full set neuve 12.600€\n126710BLRO jubilé 2022 FS TBE 18.900€\n"
        "116500LN blanc 2019 FS TBE 27.500€\n124270 2022 FS neuve 7.300€\n"
    )
    info = extract_watch_info(text)
    assert info.message_type == "sale"
    assert [w.reference for w in info.watches] == ["126610LN", "126710BLRO", "116500LN", "124270"]
    assert [w.price for w in info.watches] == [12600, 18900, 27500, 7300]
    assert [w.model for w in info.watches] == ["Submariner", "GMT-Master II", "Daytona", "Explorer"]


def test_twelve_line_list_gives_twelve_watches() -> None:
    refs = ["126610LN", "126710BLRO", "116500LN", "124270", "126500LN", "228239",
            "126334", "326934", "126622", "116610LV", "126711CHNR", "214270"]  # fmt: skip
    text = "Dispo:\n" + "\n".join(f"{r} 2022 full set ${15 + i},500" for i, r in enumerate(refs))
    info = extract_watch_info(text)
    assert len(info.watches) == 12
    assert [w.reference for w in info.watches] == refs
    assert all(w.brand == "Rolex" and w.box for w in info.watches)


def test_header_line_applies_to_every_watch() -> None:
    text = "Tudor neuves stickers, carte 2024 :\nBB58 bleue 79030B — 3 450 €\nPelagos 39 25407N — 3 900 €"
    info = extract_watch_info(text)
    assert [(w.brand, w.model, w.condition, w.year, w.papers) for w in info.watches] == [
        ("Tudor", "Black Bay", "new", 2024, True),
        ("Tudor", "Pelagos", "new", 2024, True),
    ]


def test_rates_override_and_default_table() -> None:
    (w,) = extract_watch_info("WTS 126610LN $10,000", rates={"USD": 0.5}).watches
    assert w.price_eur == 5000
    assert RATES_DATE and DEFAULT_EUR_RATES["EUR"] == 1.0
    assert to_eur(100, "XXX") is None


def test_empty_and_chatter() -> None:
    assert extract_watch_info("") == WatchInfo()
    assert extract_watch_info("   \n ").watches == []
    info = extract_watch_info("mdr la tête du gars quand il a vu le prix 😂")
    assert info.message_type == "other" and info.watches == []


def assert_as_validated(info: WatchInfo) -> None:
    """The result is what pydantic's validation makes of its own values: the extractor builds it without
    validating again, so every field must already hold a value of the field's exact type."""

    def fields(model: object) -> list[tuple[str, type, object]]:
        return [(k, type(v), v) for k, v in vars(model).items() if k != "watches"]

    def given(model: WatchInfo | WatchListing) -> dict[str, object]:  # the fields it was given
        return {k: v for k, v in vars(model).items() if k in model.model_fields_set}

    validated = [WatchListing.model_validate(given(w)) for w in info.watches]
    for got, expected in zip(info.watches, validated, strict=True):
        assert fields(got) == fields(expected)
        assert got.model_fields_set == expected.model_fields_set
    values = given(info)
    if "watches" in values:
        values["watches"] = validated
    again = WatchInfo.model_validate(values)
    assert fields(info) == fields(again) and info.model_fields_set == again.model_fields_set
    assert info == again and info.model_dump_json() == again.model_dump_json()


def test_every_dev_message_gives_what_validation_gives() -> None:
    import json
    from pathlib import Path

    labelled = Path(__file__).resolve().parents[2] / "shared" / "data" / "labelled"
    texts = [
        json.loads(line)["text"]
        for name in ("usa_dev.jsonl", "fr_dev.jsonl")
        for line in (labelled / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    assert len(texts) > 100
    for text in texts:
        assert_as_validated(extract_watch_info(text))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=3000))
def test_any_text_gives_a_valid_watchinfo(text: str) -> None:
    info = extract_watch_info(text)
    assert isinstance(info, WatchInfo)
    WatchInfo.model_validate(info.model_dump())
    assert_as_validated(info)


_PIECES = st.sampled_from(
    ["Rolex", "126610LN", "$", "€", "8,2k", "k", "18k", " ", "\n", "-", "/", ".", "5711/1A-010", "full set", "2020",
     "41mm", "06 12 34 56 78", "WTB", "Vends", "?", "0", "9", "RM", "PAM", "×" * 3, "\u202f", "ǅ", "İ"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=400).map("".join))
def test_dealer_like_noise_never_raises(text: str) -> None:
    info = extract_watch_info(text)
    assert_as_validated(info)
    for w in info.watches:
        assert w.price is None or w.price > 0
        assert 0.0 <= info.confidence <= 1.0


def test_very_long_message_is_bounded() -> None:
    text = ("WTS 126610LN full set $14,500\n" * 5000) + "x" * 100_000
    info = extract_watch_info(text)
    assert info.message_type == "sale"
    assert len(info.watches) > 100


# The prefiltered scanners must find exactly what their plain patterns find, on any text.
_SCAN_PIECES = st.sampled_from(
    ["new", "like new", "full set", "box", "papers", "b&p", "no papers", "2019", "05/2022", "jan 2021", "19",
     "automatic", "manual", "quartz", "wtb", "wts", "for sale", "cherche", "avis", "prix", "price: 9000", " ",
     "\n", "-", "/", ".", "x", "N12/24", "10/10", "tbe", "be", "pre-owned", "comme neuve", "boite papiers"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.lists(_SCAN_PIECES, max_size=60).map("".join)))
def test_prefiltered_scanners_match_their_patterns(text: str) -> None:
    import re

    from src import watch_info_extractor as wie

    scanners = [v for v in vars(wie).values() if isinstance(v, wie._Scanner)]
    assert len(scanners) >= 5
    for scanner in scanners:
        plain = re.compile(scanner.pattern)
        for t in (text, text.lower()):
            expected = [(m.span(), m.lastgroup) for m in plain.finditer(t)]
            assert [(m.span(), m.lastgroup) for m in scanner.finditer(t)] == expected
            got = scanner.search(t)
            first = plain.search(t)
            assert (got.span() if got else None) == (first.span() if first else None)
            if first is not None:  # a bounded search sees only matches starting before the bound
                bounded = scanner.search(t, 0, first.start() + 1)
                assert bounded is not None and bounded.span() == first.span()
                assert scanner.search(t, 0, first.start()) is None


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab \n\t\r\x0b\x0c\x1c\x85\xa0\u2028\u3000\u200bé")), max_size=30)
)
def test_whitespace_collapse_equals_the_regex(text: str) -> None:
    import re

    from src import watch_info_extractor as wie

    assert wie._collapse_ws(text) == re.sub(r"\s+", " ", text)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["+", "0", "1", "2", "5", "9", " ", ".", "-", "(", ")", "/", "a", "<phone>", ",", "€"]
        ),
        max_size=40,
    ).map("".join)
)
@example("+1 234 5678")  # 8 digits: the fewest a blanked phone holds
@example("tel:0612345678, (555) 123-4567 / 06.12.34.56.78")
def test_phone_gates_never_skip_a_phone(text: str) -> None:
    from src import watch_info_extractor as wie

    def blank(m):  # the mask without its gates
        if m.group() != "<phone>" and sum(ch.isdigit() for ch in m.group()) < 8:
            return m.group()
        return " " * len(m.group())

    expected = wie._PHONE_RE.sub(blank, text)
    assert wie._mask_phones(text) == expected
    # With the digit-run count of the token pass, as the extractor calls it.
    assert wie._mask_phones(text, wie._scan_tokens(text, text.split()).phone_digits) == expected


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["1", "9", "00", "12", " ", ".", ",", "'", "-", "/", "$", "€", "£", "¥", "us$", "usd", "usdt", "eur",
             "euro", "euros", "chf", "gbp", "hk$", "hkd", "aed", "sgd", "s$", "jpy", "cad", "aud", "k", "m", "e",
             "a", "x", "u", "s", ",-", "\n"]
        ),
        max_size=30,
    ).map("".join)
)  # fmt: skip
def test_class_led_price_pattern_equals_the_lookbehind_form(text: str) -> None:
    import re

    from src import watch_info_extractor as wie

    head = rf"(?<![\w.,/$€£])(?:(?P<pre>{wie._CUR_PRE})[ ]?)?(?P<num>{wie._NUM})"
    plain = re.compile(head + wie._PRICE_RE.pattern[wie._PRICE_RE.pattern.index("(?:[ ]?(?P<mult>") :])
    expected = [
        (m.span(), m.group("pre"), m.group("num"), m.group("mult", "kd", "post"))
        for m in plain.finditer(text)
    ]
    got = []
    for m in wie._PRICE_RE.finditer(text):
        if m.group("nr") is not None:
            pre, num = None, text[m.start() : m.end("nr")]
        else:
            pre, num = text[m.start() : m.end("pr")], m.group("num")
        got.append((m.span(), pre, num, m.group("mult", "kd", "post")))
    assert got == expected


def test_one_line_and_separator_lines() -> None:
    # A single line ending in ":" is no list header: its watch stays.
    (w,) = extract_watch_info("Rolex 116610LN dispo :").watches
    assert (w.brand, w.reference) == ("Rolex", "116610LN")
    # Separator lines in a list carry no attributes and change no default.
    info = extract_watch_info(
        "Full set 2021\n———\nRolex 116610LN $12,500\n---\nRolex 126710BLRO $21,000\n———"
    )
    assert [w.reference for w in info.watches] == ["116610LN", "126710BLRO"]
    assert [w.price for w in info.watches] == [12500, 21000]


# Reference candidates and aliases are tried only where a token says they may start: the same matches as finditer.
_TOKEN_PIECES = st.sampled_from(
    ["rolex", "royal", "oak", "royal oak", "a. lange", "lange & sohne", "gmt-master ii", "code 11.59", "sub", "rm",
     "rm011", "pam", "ref", "ref.", "ref:", "reference", "omaga", "submarinr", "rollex", "audemar", "116610ln",
     "5711/1a-010", "15202st.oo.1240st.01", "ab12", "abcdef1", "a.", "land", "land - dweller", "yacht", "l.u.c",
     "mb&f", "sea-dweller deepsea", "gmt", "x-1234", "-1234", "1234", "a", "é", "_", "1", "9", "ln", " ", "  ", "\n", "\t", "-", "/", ".", ",",
     "(", ")", ":", "#", "&", "'", "\u00a0", "\u2028", "\u3000"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(_TOKEN_PIECES, max_size=50).map("".join), st.text(max_size=200)))
def test_token_starts_find_what_finditer_finds(text: str) -> None:
    from src import watch_info_extractor as wie

    text = text.lower()
    starts = wie._scan_tokens(text, text.split())
    ref_starts, alias_starts = starts.refs, starts.aliases
    ref_positions = [p for p, _found in ref_starts]
    alias_positions = [p for p, _found in alias_starts]
    for rx, starts in ((wie._REF_CANDIDATE_RE, ref_positions), (wie._ALIAS_RE, alias_positions)):
        got, resume = [], 0
        for p in starts:
            if p >= resume and (m := rx.match(text, p)) is not None:
                got.append((m.span(), m.groups()))
                resume = m.end()
        assert got == [(m.span(), m.groups()) for m in rx.finditer(text)]
    # Candidates and aliases worked out on their token alone are the ones matched in the text.
    def refs(starts: list) -> list[tuple]:
        fields = ("start", "end", "ref", "brand", "family", "needs_context", "exact")
        return [tuple(getattr(r, f) for f in fields) for r in wie._find_refs(text, starts)]

    assert refs(ref_starts) == refs([(p, None) for p in ref_positions])

    def aliases(starts: list) -> list[tuple]:
        fields = ("start", "end", "brand", "family", "weak")
        found = wie._find_alias_mentions(text, text.upper(), [], starts, set())
        return [tuple(getattr(m, f) for f in fields) for m in found]

    assert aliases(alias_starts) == aliases([(p, None) for p in alias_positions])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["1", "2", "9", "0", "3", "19", "20", "1998", "2021", " ", "-", "+", "/", ".", "$", "€", "%",
                         "a", "_", "\n"]),
        max_size=30,
    ).map("".join)
)  # fmt: skip
def test_class_led_year_pattern_equals_the_lookbehind_form(text: str) -> None:
    import re

    from src import watch_info_extractor as wie

    plain = re.compile(r"(?<![\w./\-$€£])(?P<y>19[3-9]\d|20[0-3]\d)" + wie._YEAR_TAIL)
    assert [(m.span(), m.group("y")) for m in wie._YEAR_RE.finditer(text)] == [
        (m.span(), m.group("y")) for m in plain.finditer(text)
    ]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["41", "40", "36.5", "39,5", "7", "mm", "m", " ", ".", "a", "x", "comme", "mmm", "\n"]),
        max_size=30,
    ).map("".join)
)
def test_size_search_from_the_first_mm_finds_what_a_whole_search_finds(text: str) -> None:
    from src import watch_info_extractor as wie

    m = wie._SIZE_RE.search(text)
    assert wie._size(text) == (float(m.group("s").replace(",", ".")) if m else None)


# Prices are tried only where a token says they may start, and not even there when the token shows a bare number.
_PRICE_PIECES = st.sampled_from(
    ["1", "9", "00", "12", "200", "2018", "116610ln", "8200€", "8,2k", "8k2", " ", "  ", "\n", "\t", "\u00a0", ".",
     ",", "'", "-", "/", ":", "$", "€", "£", "¥", "us$", "usd", "eur", "euro", "euros", "chf", "hk$", "s$", "k", "m",
     "mio", "e", "a", "x", "u", "s", "ex", ",-", ".-", "mm", "prix", "ref", "rolex", "+", "(", ")", "0", " k", " €",
     " eur", " 000", " ,-", " $", " 5", "port", "deposit", "de port", "+ ", "label", "fee", "prix: ", "px", "budget"]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.lists(_PRICE_PIECES, max_size=40).map("".join), st.text(max_size=200)))
@example("8200 €")  # a bare number at its token's end, carried on by the next token: not bare
@example("8 200 000 eur")
@example("9.5 k usd et 2018 rolex")
@example("$ 5 ou 5 $ 6")
@example("2018\u00a0€ 2018  € 2018\n€")  # only a plain space carries a price on
def test_price_starts_find_what_finditer_finds(text: str) -> None:
    from src import watch_info_extractor as wie

    text = text.lower()
    starts = wie._scan_tokens(text, text.split())
    assert len(starts.prices) == len(starts.price_bare_ends)
    got, resume = [], 0
    for p, bare_end in zip(starts.prices, starts.price_bare_ends, strict=True):
        if p < resume:
            continue
        m = wie._PRICE_RE.match(text, p)
        if bare_end >= 0:  # said to be a bare number ending there: check it
            assert m is not None and m.lastindex == 1 and m.end() == bare_end, (p, bare_end)
        if m is not None:
            got.append((m.span(), m.groups()))
            resume = m.end()
    assert got == [(m.span(), m.groups()) for m in wie._PRICE_RE.finditer(text)]
    prices = wie._find_prices(text, starts)
    assert [(p.start, p.end, p.amount, p.currency) for p in prices] == [
        (p.start, p.end, p.amount, p.currency) for p in wie._find_prices(text)
    ]
    # Shipping and deposit prices are told apart as the patterns alone tell them (the word gate skips none).
    for p in prices:
        m = wie._PRICE_RE.match(text, p.start)
        if m is not None and m.end() == p.end and m.lastindex != 1:  # found by the pattern, not by a keyword
            before, after = text[max(0, p.start - 16) : p.start], text[p.end : p.end + 20]
            extra = bool(wie._EXTRA_BEFORE_RE.search(before) or wie._EXTRA_AFTER_RE.match(after))
            assert p.extra == extra, p.start


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_PRICE_PIECES, _TOKEN_PIECES), max_size=50).map("".join))
def test_mention_starts_after_price_masking_are_the_masked_texts(text: str) -> None:
    from src import watch_info_extractor as wie

    folded = wie._fold(text)
    starts = wie._scan_tokens(folded, folded.split())
    prices = wie._find_prices(folded, starts)
    masked = wie._mask_spans(folded, [(p.start, p.end) for p in prices])
    direct = wie._scan_tokens(masked, masked.split())
    assert wie._mention_starts(folded, masked, prices, starts) == (direct.refs, direct.aliases)
    # The misspelt names found before masking are all those of the masked text (and no others it holds).
    assert {w for w in wie._WORD_RE.findall(masked) if wie._fuzzy_alias(w)} <= starts.fuzzy


# Attribute scans are tried only where _span_starts says a match may start: they must find all they find anywhere.
_GATE_PIECES = st.sampled_from(
    ["like new", "as new", "comme neuve", "bon etat", "tres bon etat", "top condition", "non portee", "n4/22", "10/10",
     "be", "BE", "nos", "pre-owned", "pre", "worn", "vintage", "b & p", "b&p", "b +p", "box", "boite et papiers",
     "no box", "no papers", "watch only", "set minus box", "fs", "automatic", "self-winding", "hand wound", "quartz",
     "2021", "1998", "05/2022", "4/25", "n1.2019", "mar 2020", "submariner 2019", "sept. 2018", "12.2019", "a", "x",
     "1", "9", "0", " ", "  ", "\n", "\t", "\u00a0", "\u3000", "-", "/", ".", ",", "(", "&", "+", "'", "serviced in ",
     "since ", "revisee en ", "polished ", "can be ", "years ", "yr", "depuis ", "2019-2021", "2019 - 21", "2020+",
     " ou plus", " or newer", " and up", " minimum", "min", "–", "1995"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(_GATE_PIECES, max_size=40).map("".join), st.text(max_size=200)))
def test_scans_from_span_starts_find_what_whole_scans_find(text: str) -> None:
    from src import watch_info_extractor as wie

    span = wie._collapse_ws(wie._fold(text))
    starts = wie._span_starts(span)
    assert all(found == sorted(found) for found in starts if found is not None)
    scanners = [
        (wie._CONDITION, wie._CONDITION_RE),
        (wie._BOX_PAPERS, wie._BOX_PAPERS_RE),
        (wie._MOVEMENT, wie._MOVEMENT_RE),
        (wie._MONTH_YEAR, wie._MONTH_YEAR_RE),
        (wie._YEAR_RANGE, wie._YEAR_RANGE_RE),
    ]
    for scan, scanner in scanners:
        expected = [(m.span(), m.lastgroup) for m in re.compile(scanner.pattern).finditer(span)]
        assert [(m.span(), m.lastgroup) for m in scanner.finditer_at(span, starts[scan])] == expected, scan
        first = scanner.search_at(span, starts[scan])
        assert (first.span() if first else None) == (expected[0][0] if expected else None)
    year_starts = starts[wie._YEAR]
    assert year_starts is not None
    assert {m.start() for m in wie._YEAR_RE.finditer(span)} <= set(year_starts)
    assert wie._year(span, year_starts, starts[wie._MONTH_YEAR]) == wie._year(span)
    skip_words = wie._scan_tokens(span, span.split()).year_skip_words
    found = wie._year(span, year_starts, starts[wie._MONTH_YEAR], skip_words, starts[wie._YEAR_RANGE])
    assert found == wie._year(span)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(_SCAN_PIECES, max_size=60).map("".join), st.text(max_size=200)))
def test_intent_scan_from_its_starts_finds_what_the_whole_scan_finds(text: str) -> None:
    from src import watch_info_extractor as wie

    for window in (wie._fold(text)[: wie._INTENT_WINDOW], text):
        expected = [(m.span(), m.lastgroup) for m in re.compile(wie._INTENT_RE.pattern).finditer(window)]
        starts = wie._intent_starts(window)
        assert [(m.span(), m.lastgroup) for m in wie._INTENT_RE.finditer_at(window, starts)] == expected
        assert wie._intent(window, starts) == wie._intent(window)
