"""docs/benchmarks.md's tables are what `bench/results/*.json` hold: generated, never pasted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import tables


def test_the_page_holds_the_table_generated_from_the_stored_results(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(tables.PAGE.read_text())
    tables.main(page)
    assert page.read_text() == tables.PAGE.read_text(), "run python -m bench.tables after a benchmark run"
    results = json.loads((tables.RESULTS / "results.json").read_text())
    assert f"{results['end_to_end']['records_per_s']:,.0f}" in page.read_text()


def test_a_block_is_replaced_between_its_markers_and_a_page_without_them_is_refused() -> None:
    begin, end = tables.BEGIN.format(name="x.json"), tables.END.format(name="x.json")
    page = f"before\n{begin}\nold figures\n{end}\nafter\n"
    assert tables.replace_block(page, "x.json", "new") == f"before\n{begin}\nnew\n{end}\nafter\n"
    with pytest.raises(ValueError, match="no markers"):
        tables.replace_block("no markers here", "x.json", "new")


def test_the_scale_table_has_a_column_per_size_and_says_what_is_missing() -> None:
    full = json.loads((tables.RESULTS / "scale.json").read_text())["rows"][0]
    small = {"resources": 10_000, "get_ms": {"p50": 1.25, "p99": 3.5}}  # a size measured without workers
    block = tables.scale_block({"when": "then", "rows": [small, full]})
    lines = block.splitlines()
    assert lines[2] == f"| measure | 10,000 resources | {full['resources']:,} resources |", lines[2]
    get = next(line for line in lines if line.startswith("| resource GET"))
    figures = f"{full['get_ms']['p50']:.1f} / {full['get_ms']['p99']:.1f}"
    assert get == f"| resource GET p50 / p99 (ms) | 1.2 / 3.5 | {figures} |"
    killed = next(line for line in lines if line.startswith("| one of two workers"))
    assert killed.split(" | ")[1] == "—", killed
