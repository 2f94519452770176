"""`python -m src.cli extract`: one text as JSON, and the streaming JSON-lines mode."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from src.cli import cli

runner = CliRunner()


def test_extract_one_text_prints_watchinfo_json() -> None:
    result = runner.invoke(cli, ["extract", "Vends Rolex Submariner 116610LN de 2018, excellent état, 8200€"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["message_type"] == "sale"
    assert data["watches"][0]["reference"] == "116610LN"


def test_extract_jsonl_streams_in_order_and_reports_bad_lines() -> None:
    lines = [
        json.dumps({"id": "a", "text": "WTB 5711/1A"}),
        "not json",
        json.dumps({"id": "b", "text": "Dispo 126610LN 12k€"}),
        json.dumps({"id": "c"}),
        json.dumps({"id": 3, "text": ""}),
    ]
    result = runner.invoke(cli, ["extract", "--jsonl"], input="\n".join(lines) + "\n")
    assert result.exit_code == 0
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["id"] for row in out] == ["a", "b", 3]
    assert out[0]["message_type"] == "wanted" and out[1]["watches"][0]["price"] == 12000
    assert "line 2" in result.stderr and "line 4" in result.stderr
