"""Extraction quality on labelled messages: precision, recall and F1 per field, and message-type accuracy.

    python bench/extraction_eval.py [FILE.jsonl ...] [--quick] [--errors]

Defaults to ../shared/data/labelled/{usa,fr}_dev.jsonl. Per message and field the multiset of non-null gold
values is compared with the predicted one; TP/FP/FN are summed over messages.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "whatsappserver"))

from src.watch_info_extractor import extract_watch_info  # noqa: E402

DEFAULT_FILES = [
    REPO_ROOT.parent / "shared" / "data" / "labelled" / n for n in ("usa_dev.jsonl", "fr_dev.jsonl")
]
FIELDS = ["brand", "model", "reference", "price", "condition", "year", "box", "papers"]
_PUNCT = re.compile(r"[\W_]+")


def _ref(v: str) -> str:
    return re.sub(r"[\s./\-]+", "", str(v).upper())


def _value(field: str, w: dict) -> object | None:
    if field == "price":
        if w.get("price") is None:
            return None
        return (round(float(w["price"]), 2), w.get("currency"))
    v = w.get(field)
    if v is None:
        return None
    if field == "model":
        return _PUNCT.sub("", str(v).lower())
    if field == "reference":
        return _ref(v)
    if field == "brand":
        return str(v).lower()
    return v


def _match_refs(gold: list[str], pred: list[str]) -> int:
    """Count matches where equal or one is a 6+ character prefix of the other, each used once."""
    pred_left = list(pred)
    tp = 0
    for g in gold:
        for i, p in enumerate(pred_left):
            short, long_ = (g, p) if len(g) <= len(p) else (p, g)
            if g == p or (len(short) >= 6 and long_.startswith(short)):
                tp += 1
                pred_left.pop(i)
                break
    return tp


def evaluate(rows: list[dict], show_errors: bool = False) -> dict[str, float]:
    counts = {f: Counter() for f in FIELDS}
    type_ok = 0
    for row in rows:
        info = extract_watch_info(row["text"]).model_dump()
        type_ok += info["message_type"] == row["type"]
        if show_errors and info["message_type"] != row["type"]:
            print(
                f"[type] {row['id']}: gold={row['type']} pred={info['message_type']} :: {row['text'][:90]!r}"
            )
        for f in FIELDS:
            gold = [v for v in (_value(f, w) for w in row["watches"]) if v is not None]
            pred = [v for v in (_value(f, w) for w in info["watches"]) if v is not None]
            if f == "reference":
                tp = _match_refs(gold, pred)
            else:
                tp = sum((Counter(gold) & Counter(pred)).values())
            counts[f]["tp"] += tp
            counts[f]["fp"] += len(pred) - tp
            counts[f]["fn"] += len(gold) - tp
            if show_errors and (len(pred) - tp or len(gold) - tp):
                print(f"[{f}] {row['id']}: gold={sorted(map(str, gold))} pred={sorted(map(str, pred))}")
    out: dict[str, float] = {}
    for f in FIELDS:
        c = counts[f]
        p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 1.0
        r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 1.0
        out[f"{f}_precision"] = p
        out[f"{f}_recall"] = r
        out[f"{f}_f1"] = 2 * p * r / (p + r) if p + r else 0.0
    out["message_type_accuracy"] = type_ok / len(rows) if rows else 0.0
    out["messages"] = float(len(rows))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--quick", action="store_true", help="same figures (the dev set is already small)")
    parser.add_argument("--errors", action="store_true", help="print every disagreement")
    args = parser.parse_args()
    files = args.files or DEFAULT_FILES
    rows = [
        json.loads(line)
        for path in files
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    res = evaluate(rows, args.errors)
    print(f"{'field':<12}{'precision':>10}{'recall':>10}{'f1':>10}")
    for f in FIELDS:
        print(f"{f:<12}{res[f + '_precision']:>10.3f}{res[f + '_recall']:>10.3f}{res[f + '_f1']:>10.3f}")
    print(f"messages: {int(res['messages'])}")
    for f in FIELDS:
        print(f"{f}_f1: {res[f + '_f1']:.3f}")
    print(f"message_type_accuracy: {res['message_type_accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
