"""The benchmark tables of `docs/benchmarks.md`, generated from `bench/results/*.json`.

`make bench` writes the results and then this; alone, `python -m bench.tables` rewrites the
tables from the results already there. Each table sits between two markers in the page, so the
prose around it stays as written and the figures are never pasted by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.report import table
from reach.config import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "bench" / "results"
PAGE = PROJECT_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- generated from bench/results/{name} by python -m bench.tables -->", "<!-- end of {name} -->"


def results_block(results: dict[str, Any]) -> str:
    """The main table of a `make bench` run, with the machine and date it ran on."""
    machine = results.get("machine", {})
    when = machine.get("when", "?")
    heading = f"Run of {when} ({machine.get('summary', '?')}, broker: {machine.get('broker', '?')}):"
    rows = "\n".join(line.rstrip() for line in table(results).splitlines())
    return f"{heading}\n\n```\n{rows}\n```"


def _figure(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _pair(found: dict[str, Any] | None, *keys: str) -> str:
    """`found`'s values of `keys`, joined by " / " (— for what is missing)."""
    found = found or {}
    return " / ".join(_figure(found.get(key)) for key in keys)


def _scale_rows(row: dict[str, Any]) -> list[tuple[str, str]]:
    memory = row.get("memory_mb") or {}
    cpu = row.get("cpu_us_per_record") or {}
    workers = row.get("workers") or {}

    def paused(event: str) -> str:
        return _figure((workers.get(event) or {}).get("paused_s"))

    killed = workers.get("kill_one_of_two") or {}
    return [
        ("peak memory ingress / worker / reader (MB)",
         " / ".join(_figure((memory.get(p) or {}).get("peak")) for p in ("ingress", "worker", "reader"))),
        ("disk ingress / worker / reader (MB)", _pair(row.get("disk_mb"), "ingress", "worker", "reader")),
        ("resource GET p50 / p99 (ms)", _pair(row.get("get_ms"), "p50", "p99")),
        ("resource list page of 100, first / 90% deep (ms p50)", _pair(row.get("page_ms"), "first_p50", "deep_p50")),
        ("batch list page of 100, first / 90% deep (ms p50)",
         _pair(row.get("batch_page_ms"), "first_p50", "deep_p50")),
        ("ingress restarted on its disk, after SIGTERM / SIGKILL → reads (s)",
         _pair(row.get("ingress_restart_s"), "after_sigterm", "after_sigkill")),
        ("new ingress, empty disk → reads (s)", _pair(row.get("ingress_restart_s"), "new_empty_disk")),
        ("worker restarted after SIGTERM / SIGKILL → a new batch done (s)",
         _pair(row.get("worker_restart_s"), "after_sigterm", "after_sigkill")),
        ("CPU of every process but the broker, per applied record (µs, median), 1 / 2 / 4 ingress processes",
         " / ".join(_figure((cpu.get(n) or {}).get("median"), 0) for n in ("1", "2", "4"))),
        ("a second worker joins (empty disk): longest pause of a partition (s)", paused("join_second")),
        ("one of two workers SIGKILLed: longest pause (s); reads not answered right",
         f"{paused('kill_one_of_two')}; {_figure(killed.get('failed'))} of {_figure(workers.get('reads'))}"
         if workers else "—"),
        ("it restarts on its disk / a third worker joins: longest pause (s)",
         f"{paused('restart_killed')} / {paused('join_third')}" if workers else "—"),
    ]


def scale_block(results: dict[str, Any]) -> str:
    """The table of a `make bench-scale` run: one column per size it loaded."""
    rows = results.get("rows", [])
    if not rows:
        return f"Run of {results.get('when', '?')}: no sizes measured."
    columns = [_scale_rows(row) for row in rows]
    header = "| measure | " + " | ".join(f"{row['resources']:,} resources" for row in rows) + " |"
    lines = [f"Run of {results.get('when', '?')}:", "", header, "|---|" + "---:|" * len(rows)]
    for i, (label, _) in enumerate(columns[0]):
        lines.append(f"| {label} | " + " | ".join(column[i][1] for column in columns) + " |")
    return "\n".join(lines)


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
    page = replace_block(page, "scale.json", scale_block(json.loads((RESULTS / "scale.json").read_text())))
    page_path.write_text(page)
    print(f"rewrote the tables of {page_path} from {RESULTS}")


if __name__ == "__main__":
    main()
