"""fast_json reads what `json` reads (orjson first, the standard library for what orjson refuses)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from src import fast_json

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_round_trip_matches_the_standard_library(value: object) -> None:
    text = json.dumps(value, ensure_ascii=False)  # hypothesis text has no lone surrogates
    assert fast_json.loads(text.encode("utf-8")) == value
    assert json.loads(fast_json.dumps(value)) == value


def test_lone_surrogate_escapes_are_read_as_json_reads_them() -> None:
    body = b'{"text": {"body": "caf\\ud83d"}}'
    assert fast_json.loads(body) == json.loads(body)


def test_bad_json_raises_the_standard_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        fast_json.loads(b'{"entry": [')


def test_dumps_keeps_non_ascii_text() -> None:
    assert fast_json.dumps({"body": "Montre état neuf €"}) == '{"body":"Montre état neuf €"}'
