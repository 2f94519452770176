"""Extractor output over a large generated corpus, saved or compared: speed work must change no answer.

    python bench/extraction_equivalence.py --save /tmp/extract-base.jsonl      # before a change
    python bench/extraction_equivalence.py --compare /tmp/extract-base.jsonl   # after it

The corpus (about 17k texts, fixed seed): the dev messages, each of their lines, the price-parser examples,
upper- and lower-cased splices of those. Both the pure-Python module and the compiled build (when current)
are run; `--compare` prints how many answers differ from the saved ones and the first few.
For instruction counts, run callgrind on the compiled build (--toggle-collect=CPyPy_extract_watch_info).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "whatsappserver"))

from src import native_extractor  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "data"


def corpus(splices: int) -> list[str]:
    texts = [
        json.loads(line)["text"]
        for name in ("usa_dev.jsonl", "fr_dev.jsonl")
        for line in (DATA / "labelled" / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    lines = [line for t in texts for line in t.splitlines() if line.strip()]
    with (DATA / "price_parser_test_examples.csv").open(encoding="utf-8") as f:
        prices = [row[0] for row in csv.reader(f) if row]
    pool = lines + prices
    rnd = random.Random(7)
    out = texts + pool
    for _ in range(splices):
        text = rnd.choice(["\n", " ", ", ", "\n\n", " | "]).join(rnd.sample(pool, rnd.randint(1, 5)))
        if rnd.random() < 0.3:
            text = text.upper() if rnd.random() < 0.5 else text.lower()
        out.append(text)
    return out


def answers(module: object, texts: list[str]) -> list[str]:
    extract = module.extract_watch_info  # type: ignore[attr-defined]
    return [extract(t).model_dump_json() for t in texts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--save", type=Path, help="write the pure-Python answers here")
    action.add_argument("--compare", type=Path, help="compare both implementations with answers saved here")
    parser.add_argument("--quick", action="store_true", help="2,000 splices instead of 15,000")
    args = parser.parse_args()
    texts = corpus(2_000 if args.quick else 15_000)
    pure = answers(native_extractor.load_pure(), texts)
    print(f"texts: {len(texts)}")
    if args.save:
        args.save.write_text("\n".join(pure) + "\n", encoding="utf-8")
        print(f"saved: {args.save}")
        return 0
    saved = args.compare.read_text(encoding="utf-8").splitlines()
    if len(saved) != len(texts):
        print(f"the saved file holds {len(saved)} answers for {len(texts)} texts: saved with another --quick?")
        return 2
    runs = {"pure_python": pure}
    compiled = native_extractor.load()
    if compiled is not None:
        runs["compiled"] = answers(compiled, texts)
    failed = False
    for name, got in runs.items():
        diffs = [i for i, (a, b) in enumerate(zip(saved, got, strict=True)) if a != b]
        for i in diffs[:3]:
            print(f"  {name} differs on {texts[i][:120]!r}\n    saved: {saved[i][:300]}\n    now:   {got[i][:300]}")
        print(f"differences_{name}: {len(diffs)}")
        failed = failed or bool(diffs)
    if compiled is None:
        print("differences_compiled: n/a (no current build: python -m src.native_extractor build)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
