"""The benchmark tables of `docs/benchmarks.md`, generated from `bench/results/*.json`.

`make bench` writes the results and then this; alone, `python -m bench.tables` rewrites the
tables from the results already there. Each table sits between two markers in the page, so the
prose around it stays as written and the figures are never pasted by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.run import table
from reach.config import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "bench" / "results"
PAGE = PROJECT_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- generated from bench/results/{name} by python -m bench.tables -->", "<!-- end of {name} -->"


def results_block(results: dict) -> str:
    """The main table of a `make bench` run, with the machine and date it ran on."""
    machine = results.get("machine", {})
    when = machine.get("when", "?")
    heading = f"Run of {when} ({machine.get('summary', '?')}, broker: {machine.get('broker', '?')}):"
    rows = "\n".join(line.rstrip() for line in table(results).splitlines())
    return f"{heading}\n\n```\n{rows}\n```"


def replace_block(page: str, name: str, block: str) -> str:
    """`page` with the text between `name`'s markers replaced by `block`."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(page):
        raise ValueError(f"{PAGE} has no markers for {name}: {begin} … {end}")
    return pattern.sub(lambda _: f"{begin}\n{block}\n{end}", page)


def main(page_path: Path = PAGE) -> None:
    results = json.loads((RESULTS / "results.json").read_text())
    page = replace_block(page_path.read_text(), "results.json", results_block(results))
    page_path.write_text(page)
    print(f"rewrote the tables of {page_path} from {RESULTS}")


if __name__ == "__main__":
    main()
