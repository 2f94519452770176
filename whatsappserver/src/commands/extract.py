"""`python -m src.cli extract`: run the watch extractor on one text or on a JSON-lines stream."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from src.watch_info_extractor import extract_watch_info


def _stream_jsonl() -> tuple[int, int]:
    """Read {"id", "text"} lines from stdin, write {"id", ...WatchInfo} lines; bad lines go to stderr."""
    out = sys.stdout
    ok = bad = 0
    for lineno, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError('expected an object with a string "text"')
        except ValueError as exc:
            bad += 1
            sys.stderr.write(f"line {lineno}: skipped: {exc}\n")
            continue
        info = extract_watch_info(row["text"])
        out.write(json.dumps({"id": row.get("id"), **info.model_dump()}, ensure_ascii=False))
        out.write("\n")
        ok += 1
    out.flush()
    return ok, bad


def register(cli: typer.Typer) -> None:
    """Add the `extract` command."""

    @cli.command()
    def extract(
        text: Annotated[str | None, typer.Argument(help="The message text to analyse.")] = None,
        jsonl: Annotated[
            bool,
            typer.Option(
                "--jsonl", help='Read {"id": ..., "text": ...} lines on stdin, write one result per line.'
            ),
        ] = False,
    ) -> None:
        """Extract brand, model, reference, price, condition, year, box and papers from a message."""
        if jsonl:
            _ok, bad = _stream_jsonl()
            if bad:
                sys.stderr.write(f"{bad} bad line(s) skipped\n")
            return
        if text is None:
            raise typer.BadParameter("give a TEXT or use --jsonl")
        typer.echo(extract_watch_info(text).model_dump_json(indent=2))
