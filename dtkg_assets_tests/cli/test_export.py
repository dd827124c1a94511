"""Export (manifest.jsonl + metrics.json) agrees with the ledger; ledger/reconcile/works CLI commands."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from dtkg_assets.core.http import make_client
from dtkg_assets.core.ledger import SCHEMA_VERSION, Ledger
from dtkg_assets.core.ledger.export import export
from dtkg_assets.core.orchestrator import Orchestrator
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import Store
from dtkg_assets.core.streaming import Engine
from dtkg_assets.core.types import Candidate, WorkRecord
from dtkg_assets_tests.support.origin import FaultMode


def test_export_numbers_match_the_ledger(settings, origin, pdf_bytes, tmp_path):
    s = settings.replace(io={"fsync": False})
    a, b = pdf_bytes(120_000, 1), pdf_bytes(1_300_000, 2)
    works = [
        WorkRecord("W1", [Candidate(origin.add("/a.pdf", a), "best_oa_location.pdf_url")], title="A"),
        WorkRecord("W2", [Candidate(origin.add("/a2.pdf", a), "best_oa_location.pdf_url")]),
        WorkRecord("W3", [Candidate(origin.add("/nf.pdf", b"", FaultMode(status=404)), "x"),
                          Candidate(origin.add("/b.pdf", b, FaultMode(truncate_after=500_000)), "y")]),
        # A login page served as a PDF: read as a landing page, it links no PDF.
        WorkRecord("W4", [Candidate(origin.add("/html.pdf", b"<!DOCTYPE html><html><body><p>Please log in.</p>"
                                               + b" " * 2000 + b"</body></html>"), "x")]),
        WorkRecord("W5", []),
    ]
    with Ledger.open_writer(s) as led, make_client(s) as client:
        orch = Orchestrator(led, Engine(client, s, Store(s)), s, owner="exp", run_id="run-x")
        orch.plan(works)
        outcomes = {o.work_id: o for o in orch.process([w.work_id for w in works], workers=2)}
        assert outcomes["W3"].status == "downloaded" and outcomes["W3"].result.resumed_from > 0
        metrics = export(led, tmp_path / "out")
        ledger_bytes = led.query("SELECT sum(bytes) FROM artifact_jobs WHERE state = 'INDEXED'")[0][0]
        ledger_requests = led.query("SELECT count(*) FROM http_attempts")[0][0]
    lines = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    by_id = {r["work_id"]: r for r in lines}
    assert sorted(by_id) == ["W1", "W2", "W3", "W4", "W5"]
    assert {w: r["status"] for w, r in by_id.items()} == {
        "W1": by_id["W1"]["status"], "W2": by_id["W2"]["status"], "W3": "stored", "W4": "failed", "W5": "failed"}
    assert {by_id["W1"]["status"], by_id["W2"]["status"]} == {"stored", "deduped"}
    w3 = by_id["W3"]
    assert (w3["sha256"], w3["bytes"], w3["decision"], w3["http_status"]) == (
        hashlib.sha256(b).hexdigest(), len(b), "resume", 206)
    assert w3["resumed_from"] > 0 and w3["url"].endswith("/b.pdf") and w3["elapsed_s"] > 0 and w3["mib_s"] > 0
    assert w3["attempts"] == 2  # one per candidate lease
    assert Path(w3["path"]).read_bytes() == b
    assert (by_id["W4"]["reason"], by_id["W5"]["reason"]) == ("no_pdf_link", "no_candidates")
    for key in ("work_id", "url", "final_url", "status", "reason", "sha256", "path", "bytes", "elapsed_s", "mib_s",
                "resumed_from", "attempts", "http_status", "decision", "etag", "last_modified"):
        assert key in w3
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk["works"] == metrics["works"] == len(lines) == 5
    assert (on_disk["stored"], on_disk["deduped"], on_disk["failed"], on_disk["pending"]) == (2, 1, 2, 0)
    assert on_disk["bytes_stored"] == ledger_bytes == len(a) + len(b)
    assert on_disk["bytes_stored"] == sum(r["bytes"] for r in lines if r["status"] == "stored")
    assert on_disk["blobs"] == 2 and on_disk["blob_bytes"] == len(a) + len(b)
    assert on_disk["http_requests"] == ledger_requests
    assert on_disk["failures_by_reason"] == {"no_pdf_link": 1}
    assert [r["run_id"] for r in on_disk["runs"]] == ["run-x"] and on_disk["runs"][0]["artifacts"] == 3


def cli(home, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTKG_")}
    env.update(DTKG_HOME=str(home), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "dtkg_assets.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_import_health_repair_reconcile_export(tmp_path):
    home = tmp_path / "home"
    works = tmp_path / "works.jsonl"
    works.write_text(
        json.dumps({"id": "https://openalex.org/W1", "best_oa_location": {"pdf_url": "http://127.0.0.1:9/1.pdf"}})
        + "\n{not json\n"
        + json.dumps({"id": "https://openalex.org/W2", "best_oa_location": {"pdf_url": "ftp://x/2.pdf"}}) + "\n"
    )
    imp = cli(home, "works", "import", str(works), "--json")
    assert imp.returncode == 0, imp.stderr
    assert json.loads(imp.stdout) == {"file": str(works), "works": 1, "new_works": 1, "new_jobs": 1, "problems": 3,
                                      "provenance": {"kind": "jsonl", "path": str(works)}}
    assert f"{works}:2: bad_input" in imp.stderr and f"{works}:3: unsupported_scheme" in imp.stderr
    health = cli(home, "ledger", "health", "--json")
    assert health.returncode == 0, health.stderr
    report = json.loads(health.stdout)
    assert (report["status"], report["version"], report["problems"]) == ("healthy", SCHEMA_VERSION, [])
    assert report["row_counts"]["works"] == 1 and report["row_counts"]["input_problems"] == 3
    with Ledger.open_writer(Settings().with_home(home)) as led:
        led.cursor().execute("DROP INDEX idx_jobs_work")
    bad = cli(home, "ledger", "validate", "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["problems"] == ["missing index idx_jobs_work"]
    rep = cli(home, "ledger", "repair", "--json")
    assert rep.returncode == 0 and json.loads(rep.stdout)["actions"] == ["created index idx_jobs_work"]
    rec = cli(home, "reconcile", "--json")
    assert rec.returncode == 0 and set(json.loads(rec.stdout).values()) == {0}
    exp = cli(home, "ledger", "export", "--out", str(tmp_path / "x"), "--json")
    assert exp.returncode == 0, exp.stderr
    assert json.loads(exp.stdout)["pending"] == 1 and json.loads(exp.stdout)["input_problems"] == 3
    assert len((tmp_path / "x" / "manifest.jsonl").read_text().splitlines()) == 1


def test_cli_writer_waits_then_fails_clearly(tmp_path):
    home = tmp_path / "home"
    with Ledger.open_writer(Settings().with_home(home), owner="busy-test"):
        rec = cli(home, "reconcile", env_extra={"DTKG_LEDGER_WRITER_WAIT_S": "0.5"})
        health = cli(home, "ledger", "health", "--json")  # readers use the snapshot meanwhile
    assert rec.returncode == 2
    assert "busy-test" in rec.stderr and "waiting up to 0.5 s" in rec.stderr and "Traceback" not in rec.stderr
    assert "Could not set lock" not in rec.stderr
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "healthy"


def test_dtkg_fetch_records_in_the_ledger(origin, pdf_bytes, tmp_path):
    body = pdf_bytes(90_000, 5)
    url = origin.add("/one.pdf", body)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTKG_")}
    env.update(DTKG_HOME=str(home), DTKG_QUOTA_FREE_BYTES_MIN="0", DTKG_ALLOW_HOSTS="127.0.0.1",
               DTKG_RATE_LIMITS="*=0", DTKG_HTTP_ROBOTS_ENABLED="0")
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "dtkg_assets.cli", "fetch", url, "--work-id", "W7", "--json"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["decision"] == "already_complete"
    assert origin.stats("/one.pdf").get_requests == 1
    with Ledger.open_reader(Settings().with_home(home)) as led:
        assert led.query("SELECT work_id, state, sha256, bytes FROM artifact_jobs") == [
            ("W7", "INDEXED", hashlib.sha256(body).hexdigest(), len(body))]
        assert led.query("SELECT count(*) FROM runs") == [(2,)]
        assert led.query("SELECT count(*) FROM http_attempts WHERE job_id IS NOT NULL")[0][0] == 1  # one GET
