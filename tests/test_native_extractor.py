"""The compiled extractor (mypyc): same answers as the pure-Python module, and never used once out of date."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import src.watch_info_extractor as serving
from src import native_extractor

LABELLED = Path(__file__).resolve().parents[2] / "shared" / "data" / "labelled"

native = native_extractor.load()
needs_build = pytest.mark.skipif(
    native is None, reason="no current compiled build (python -m src.native_extractor build)"
)


def _dev_texts() -> list[str]:
    texts = [
        json.loads(line)["text"]
        for name in ("usa_dev.jsonl", "fr_dev.jsonl")
        for line in (LABELLED / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    lines = [line for t in texts for line in t.splitlines() if line.strip()]
    return texts + lines + [t.upper() for t in texts] + ["\n".join(texts[i : i + 4]) for i in range(0, 150, 4)]


def test_a_current_build_imports() -> None:
    # A build made from these sources must load: one that fails at import would silently leave pure Python.
    assert native is not None or not native_extractor.is_current()


def test_the_serving_extractor_is_the_current_build_when_there_is_one() -> None:
    compiled = native is not None
    assert serving.IMPLEMENTATION == ("mypyc" if compiled else "python")
    module = native_extractor.NATIVE_MODULE if compiled else "src.watch_info_extractor"
    for name in ("extract_watch_info", "find_brands", "parse_prices", "reference_info"):
        assert getattr(serving, name).__module__ == module


@needs_build
def test_compiled_and_pure_python_agree_on_every_dev_message() -> None:
    pure = native_extractor.load_pure()
    texts = _dev_texts()
    assert len(texts) > 400
    for text in texts:
        assert native.extract_watch_info(text) == pure.extract_watch_info(text), text
    sample = texts[:60]
    for helper in ("find_brands", "find_references", "parse_prices", "canonical_model", "classify_message"):
        for text in sample:
            assert getattr(native, helper)(text) == getattr(pure, helper)(text), (helper, text)


_PIECES = st.sampled_from(
    ["Rolex", "126610LN", "$", "€", "8,2k", "k", "18k", " ", "\n", "-", "/", ".", "5711/1A-010", "full set",
     "2020", "41mm", "WTB", "Vends", "?", "0", "9", "RM", "PAM", "\u202f", "İ", "boite papiers", "05/2022",
     "Omaga", "Batman", "neuve", "TBE", "15500ST.OO.1220ST.01", "CHF 12’500", "+ label", "contre", ":"]
)  # fmt: skip


@needs_build
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=400), st.lists(_PIECES, max_size=80).map("".join)))
def test_compiled_and_pure_python_agree_on_any_text(text: str) -> None:
    pure = native_extractor.load_pure()
    assert native.extract_watch_info(text) == pure.extract_watch_info(text)


def test_a_build_older_than_the_source_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The digest covers the extractor and the modules its types come from: an edit to any makes a build stale.
    edited = tmp_path / "watch_info_extractor.py"
    edited.write_bytes(native_extractor.SOURCE.read_bytes() + b"\n# edited\n")
    before = native_extractor.source_digest()
    monkeypatch.setattr(native_extractor, "DEPENDENCIES", (edited, *native_extractor.DEPENDENCIES[1:]))
    assert native_extractor.source_digest() != before
    assert native_extractor.is_current() is False
    assert native_extractor.load() is None


def test_no_stamp_means_no_compiled_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_extractor, "STAMP", tmp_path / "missing")
    assert native_extractor.load() is None
