"""`reach delete` against a real ingress process and worker: a dry run, deletes in batches of
1000 from a file, a cascade, and the exit codes an operator's script relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from reach.config import Settings
from reach.delete import main
from tests.support import (
    CUSTOMER_SCHEMA,
    ServiceProcess,
    bearer,
    partner_token,
    tenant_token,
    wait_ingress_ready,
    wait_terminal,
)


def _upload(base: str, schema: str, resources: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{base}/api/resources/{schema}/batch", json={"resources": resources},
                          headers=bearer(tenant_token()), timeout=60)
    assert response.status_code == 202, response.text
    with httpx.Client(base_url=base) as client:
        assert wait_terminal(client, response.json()["data"]["batchId"], bearer(tenant_token()))["status"] == "success"


def _total(base: str, schema: str) -> int:
    return httpx.get(f"{base}/api/resources/{schema}?limit=1",
                     headers=bearer(tenant_token())).json()["data"]["pagination"]["total"]


def test_reach_delete_runs_a_dry_run_then_deletes_in_batches_and_reports(
        settings: Settings, worker: Any, reader: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ingress = ServiceProcess(["-m", "ingest.server"], settings, tmp_path / "ingress.log").start()
    try:
        base = wait_ingress_ready(settings)
        for body in ({"name": "Customer", "externalIdField": "id", "schema": CUSTOMER_SCHEMA},
                     {"name": "Order", "externalIdField": "id", "schema": {
                         "type": "object", "required": ["id"], "properties": {
                             "id": {"type": "string"}, "customer": {"$ref": "reach:schemas/Customer"}}}}):
            assert httpx.post(f"{base}/partner/schema-definitions", json=body,
                              headers=bearer(partner_token())).status_code == 200
        for start in range(0, 2500, 1000):
            _upload(base, "Customer", [{"id": f"c{i}", "name": "C"} for i in range(start, min(start + 1000, 2500))])
        _upload(base, "Order", [{"id": "o1", "customer": "c7"}])
        ids = tmp_path / "ids.txt"
        ids.write_text("".join(f"c{i}\n" for i in range(2500)) + "\n")  # a blank line is skipped
        common = ["--url", base, "--token", partner_token(), "--tenant", "tenant-1"]

        assert main(["customer", "--ids-file", str(ids), "--dry-run", *common]) == 0
        assert "would delete 2499 (2499 Customer); 1 left in place" in capsys.readouterr().out
        assert _total(base, "customer") == 2500

        first = tmp_path / "first.txt"
        first.write_text("".join(f"c{i}\n" for i in range(1200)))
        code = main(["customer", "--ids-file", str(first), *common])
        out = capsys.readouterr().out
        assert code == 1, out  # c7 stays, REFERENCED: a failed record is a non-zero exit
        assert out.count("accepted:") == 2 and "processed 1200/1200" in out, out
        assert "deleted 1199; failed 1 (REFERENCED 1)" in out and "c7: REFERENCED" in out, out
        # The rest with --all: one deleteAll batch of 1,301 records (more than an upload may hold).
        code = main(["customer", "--all", *common])
        out = capsys.readouterr().out
        assert code == 1 and "(1301 records)" in out and "deleted 1300; failed 1 (REFERENCED 1)" in out, out

        assert main(["customer", "--id", "c7", "--cascade", *common]) == 0
        assert "deleted 1; failed 0; deleted by cascade 1 (1 Order)" in capsys.readouterr().out
        assert _total(base, "customer") == 0 and _total(base, "order") == 0

        assert main(["nothing-such", "--all", *common]) == 2
        assert "answered 404" in capsys.readouterr().err
    finally:
        ingress.stop()
