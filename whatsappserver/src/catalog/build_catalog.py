"""Regenerate catalog.json from curated.json plus the public facts in ../shared/data/catalog/.

Run from the repo root: `python whatsappserver/src/catalog/build_catalog.py`. The output is committed, so the
server never needs the shared data at run time. Source of the reference rows: watchbase.com via
Rocket891/Whatsapp-Watch-Parser-v2 (MIT); only facts (brand, family, reference) are kept.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
SHARED_CATALOG = REPO_ROOT.parent / "shared" / "data" / "catalog"
CSV_PATH = SHARED_CATALOG / "watchbase_references_26brands.csv"
OUT_PATH = HERE / "catalog.json"

# Brands whose references carry a dial/variant suffix after a dash that dealers usually leave out.
_DASH_SUFFIX_BRANDS = {"Rolex", "Tudor", "Patek Philippe", "Vacheron Constantin"}
_NORM_RE = re.compile(r"[\s./\-]+")
_CORE_RE = re.compile(r"^[A-Z]?\d{4,6}[A-Z]{0,6}")


def normalize_reference(ref: str) -> str:
    """Same rule as the extractor: upper case, no spaces, dots, dashes or slashes."""
    return _NORM_RE.sub("", ref.upper())


def reference_keys(brand: str, ref: str) -> set[str]:
    """The lookup keys a dealer's spelling of this reference may reduce to."""
    ref = ref.strip().upper().replace("\u00ad", "")
    keys: set[str] = set()
    base = ref
    if brand in _DASH_SUFFIX_BRANDS and "-" in ref:
        base = ref.split("-", 1)[0]
    elif brand == "Audemars Piguet" and "." in ref:
        base = ref.split(".", 1)[0]
    else:
        keys.add(normalize_reference(ref))
    nbase = normalize_reference(base)
    keys.add(nbase)
    if brand == "Tudor" and nbase.startswith("M"):
        keys.add(nbase[1:])
    if brand in {"Rolex", "Tudor", "Patek Philippe", "Audemars Piguet", "Vacheron Constantin"}:
        core = _CORE_RE.match(nbase[1:] if brand == "Tudor" and nbase.startswith("M") else nbase)
        if core:
            keys.add(core.group())
            digits = re.match(r"\d+", core.group())
            if digits and len(digits.group()) >= 4:
                keys.add(digits.group())
    return {k for k in keys if len(k) >= 4}


def build() -> dict:
    curated = json.loads((HERE / "curated.json").read_text(encoding="utf-8"))
    brand_names: dict[str, str] = curated["csv_brand_names"]
    family_map: dict[str, dict[str, str | None]] = curated["csv_family_map"]
    refs: dict[str, set[tuple[str, str | None]]] = defaultdict(set)
    plain_six: dict[str, Counter] = defaultdict(Counter)
    with CSV_PATH.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            brand = brand_names.get(row["brand"])
            if brand is None or not row["reference"].strip():
                continue
            fam_raw = row["family"].strip()
            fmap = family_map.get(brand, {})
            family = fmap[fam_raw] if fam_raw in fmap else fam_raw or None
            overrides = curated["family_prefix_overrides"].get(brand, {})
            for key in reference_keys(brand, row["reference"]):
                fam = family
                for prefix, forced in overrides.items():
                    if key.startswith(prefix) and (family or "").startswith(forced.split("-")[0][:3]):
                        fam = forced
                refs[key].add((brand, fam))
                if re.fullmatch(r"\d{6}[A-Z]*", key) and re.match(r"\d{6}", row["reference"].strip()):
                    plain_six[key[:3]][brand] += 1
    # Hand-checked facts win over scraped rows for the same key.
    for brand, table in curated["extra_references"].items():
        for ref, family in table.items():
            for key in reference_keys(brand, ref) | {normalize_reference(ref)}:
                refs[key] = {(brand, family)}
    brands = sorted({b for pairs in refs.values() for b, _ in pairs} | set(curated["brands"]))
    families = sorted({f for pairs in refs.values() for _, f in pairs if f})
    b_index = {b: i for i, b in enumerate(brands)}
    f_index = {f: i for i, f in enumerate(families)}
    table: dict[str, list[list[int]]] = {}
    for key in sorted(refs):
        pairs = refs[key]
        # A key that maps to one brand but several families keeps the brand only.
        by_brand: dict[str, set[str | None]] = defaultdict(set)
        for b, f in pairs:
            by_brand[b].add(f)
        table[key] = [
            [b_index[b], f_index[next(iter(fs))] if len(fs) == 1 and None not in fs else -1]
            for b, fs in sorted(by_brand.items())
        ]
    # Family by reference prefix, per brand: lets an unseen reference of a known series find its family.
    prefix_counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for key, pairs in refs.items():
        if len(pairs) != 1:
            continue
        ((b, f),) = pairs
        for n in range(3, min(len(key), 6) + 1):
            if f:
                prefix_counts[(b, key[:n])][f] += 1
    prefix_families: dict[str, dict[str, str]] = defaultdict(dict)
    for (b, prefix), counter in prefix_counts.items():
        fam, n = counter.most_common(1)[0]
        total = sum(counter.values())
        if total >= 3 and n / total >= 0.9:
            prefix_families[b][prefix] = fam
    six_digit_prefix_brand = {
        p: c.most_common(1)[0][0]
        for p, c in plain_six.items()
        if sum(c.values()) >= 3 and c.most_common(1)[0][1] / sum(c.values()) >= 0.95
    }
    return {
        "_source": "Facts from watchbase.com via Rocket891/Whatsapp-Watch-Parser-v2 (MIT) and curated.json; "
        "generated by build_catalog.py, do not edit by hand.",
        "brands": curated["brands"],
        "ref_shapes": curated["ref_shapes"],
        "rolex_suffixes": curated["rolex_suffixes"],
        "brand_list": brands,
        "family_list": families,
        "references": table,
        "prefix_families": {b: dict(sorted(v.items())) for b, v in sorted(prefix_families.items())},
        "six_digit_prefix_brand": dict(sorted(six_digit_prefix_brand.items())),
    }


def main() -> int:
    catalog = build()
    OUT_PATH.write_text(json.dumps(catalog, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    sys.stderr.write(
        f"wrote {OUT_PATH} ({OUT_PATH.stat().st_size // 1024} KiB, {len(catalog['references'])} keys)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
