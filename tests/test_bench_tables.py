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
