"""Chat-export import speed on the embedded default (SQLite + local embedder): messages stored and processed per second.

    python bench/import_speed.py [--lines 100000] [--quick]

Writes a synthetic Android export (French dates) of `--lines` lines to a temp dir: sale lines, wanted and
questions, chatter, multi-line stock lists, system lines, media-omitted lines, edited markers. Then runs the
same code as `import-chat` (parse, insert in chunks, extract, embed, store listings) on a fresh SQLite file
and re-imports the file once to time the idempotent path. `--quick` does the same on 10,000 lines.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "whatsappserver"))

from src.chat_export import ExportFile, guess_format, parse_export  # noqa: E402
from src.commands.import_chat import import_export  # noqa: E402
from src.config import Settings  # noqa: E402
from src.services import build_services  # noqa: E402

AUTHORS = ["Alice Faux", "Bruno Fictif", "+1 555 0101", "+1 555 0102", "Carla Exemple", "Dana Sample"]
WATCHES = [
    ("Rolex", "Submariner", "126610LN", 13500),
    ("Rolex", "GMT-Master II", "126710BLRO", 18500),
    ("Rolex", "Daytona", "126500LN", 29000),
    ("Patek Philippe", "Nautilus", "5711/1A", 120000),
    ("Audemars Piguet", "Royal Oak", "15510ST", 42000),
    ("Omega", "Speedmaster", "310.30.42.50.01.001", 6200),
    ("Tudor", "Black Bay", "79230N", 3100),
    ("Cartier", "Santos", "WSSA0018", 6900),
]
CHATTER = ["ok", "merci", "dispo ?", "je regarde", "top", "envoyé en privé", "bonne journée à tous"]


def write_export(path: Path, lines: int, seed: int = 7) -> None:
    """A realistic mix; ~70% of headers carry a watch."""
    rng = random.Random(seed)
    when = datetime(2021, 1, 4, 8, 0, tzinfo=UTC)
    out: list[str] = ["04/01/2021, 08:00 - Les messages et les appels sont chiffrés de bout en bout."]
    while len(out) < lines:
        when += timedelta(minutes=rng.randint(1, 30))
        head = f"{when:%d/%m/%Y, %H:%M} - {rng.choice(AUTHORS)}: "
        brand, model, ref, price = rng.choice(WATCHES)
        price = int(price * rng.uniform(0.85, 1.15)) // 100 * 100
        roll = rng.random()
        if roll < 0.35:
            out.append(
                head
                + f"Vends {brand} {model} {ref} {rng.randint(2015, 2024)} full set {price:,} €".replace(
                    ",", " "
                )
            )
        elif roll < 0.45:
            out.append(head + "Stock du jour :")
            for _ in range(rng.randint(2, 6)):
                b, m, r, p = rng.choice(WATCHES)
                out.append(f"{b} {m} {r} - {p:,} €".replace(",", " "))
        elif roll < 0.60:
            out.append(head + f"Cherche {brand} {model} {ref} budget {price // 1000}k")
        elif roll < 0.70:
            out.append(head + f"Qui a une {model} {ref} ? <Ce message a été modifié>")
        elif roll < 0.78:
            out.append(head + "<Médias omis>")
        elif roll < 0.80:
            out.append(f"{when:%d/%m/%Y, %H:%M} - {rng.choice(AUTHORS)} a ajouté {rng.choice(AUTHORS)}")
        else:
            out.append(head + rng.choice(CHATTER))
    path.write_text("\n".join(out[:lines]) + "\n", encoding="utf-8")


async def run(lines: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "WhatsApp Chat with Bench Dealers.txt"
        write_export(export, lines)

        started = time.perf_counter()
        items = 0
        file = ExportFile(export)
        order = guess_format(file.lines()).date_order
        for _ in parse_export(file.lines(), "Bench Dealers", date_order=order, tz=UTC):
            items += 1
        parse_seconds = time.perf_counter() - started

        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            SQLITE_PATH=Path(tmp) / "bench.sqlite3",
            OPENAI_API_KEY="",
            DATABASE_URL="",
            SUPABASE_URL="",
            LOG_LEVEL="WARNING",
        )
        services = await build_services(settings)
        try:
            started = time.perf_counter()
            summary = await import_export(services, export, tz=UTC)
            import_seconds = time.perf_counter() - started
            started = time.perf_counter()
            again = await import_export(services, export, tz=UTC)
            reimport_seconds = time.perf_counter() - started
        finally:
            await services.aclose()

    assert again.new == 0, "re-import must add nothing"
    listings = sum(summary.listings_by_type.values())
    skipped = sum(bucket.entries for bucket in summary.skipped.values())
    print(f"export_lines: {lines}")
    print(f"messages: {summary.messages}")
    print(f"listings: {listings}")
    print(f"skipped_entries: {skipped}")
    print(f"failed: {summary.failed}")
    print(f"parse_lines_per_second: {lines / parse_seconds:.0f}")
    print(f"import_seconds: {import_seconds:.2f}")
    print(f"import_messages_per_second: {summary.messages / import_seconds:.0f}")
    print(f"reimport_messages_per_second: {again.messages / reimport_seconds:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 lines (under a minute)")
    args = parser.parse_args()
    asyncio.run(run(10_000 if args.quick else args.lines))


if __name__ == "__main__":
    main()
