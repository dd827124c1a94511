"""The UI `dagster dev` serves after a demo: its GraphQL endpoint lists `artifact_pdfs` with
exactly the demo's works as partitions, materialized and failed exactly as the ledger says, with
its checks, sensors and schedules. Then, with the daemon and every sensor on, partition backfills
launched through GraphQL the way the UI's buttons launch them obey the user and end as the ledger
says (see `test_backfills_from_the_ui_obey_the_user_and_match_the_ledger`).

`dagster dev` runs with the README's environment: only DTKG_HOME and DAGSTER_HOME (the settings the
demo needs come from DTKG_HOME/settings.env), plus a short reconcile interval. The demo's origin is
served again by `dtkg demo --serve`; new works point at an origin this test controls.

`dagster dev` started from a non-interactive process ignores SIGTERM/SIGINT unless it has its own
session, so it is started with `start_new_session=True` and stopped by process group; any process
still carrying this test's DAGSTER_HOME afterwards is killed by pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtkg_assets_tests.conftest import pdf_bytes
from dtkg_assets_tests.support.demo_home import DTKG, DemoHome, copy_home, demo_env, sha256_file, snapshot
from dtkg_assets_tests.support.net import free_port
from dtkg_assets_tests.support.origin import FaultMode, OriginServer

REPO = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).with_name("dagster")
STARTUP_TIMEOUT_S = 180.0  # webserver, daemon and a code server on a loaded 2-core machine
STOP_GRACE_S = 30.0
CODE_SERVER_HEARTBEAT_S = 45.0  # dagster dev's --heartbeat-timeout for its code servers

QUERY = """
query DemoUi {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes { name location { name } sensors { name } schedules { name } }
    }
    ... on PythonError { message }
  }
  assetNodes { assetKey { path } }
  assetNodeOrError(assetKey: {path: ["artifact_pdfs"]}) {
    __typename
    ... on AssetNode {
      isPartitioned
      partitionKeys
      partitionStats { numPartitions numMaterialized numFailed numMaterializing }
      assetPartitionStatuses {
        __typename
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
      }
      assetChecksOrError { __typename ... on AssetChecks { checks { name } } }
    }
  }
}
"""


RECONCILE_INTERVAL_S = 20


@dataclass
class Ui:
    home: Path
    data: dict[str, Any]
    works: list[str]
    finished: set[str]
    failed: set[str]
    url: str
    origin: OriginServer


def _graphql(url: str, query: str, timeout: float = 30.0, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


def _loaded(result: dict[str, Any]) -> bool:
    """True once the code location has loaded and artifact_pdfs resolves."""
    data = result.get("data") or {}
    node = data.get("assetNodeOrError") or {}
    repos = data.get("repositoriesOrError") or {}
    return node.get("__typename") == "AssetNode" and bool(repos.get("nodes"))


def _processes_with_env(marker: str) -> list[int]:
    """Pids of processes whose environment mentions `marker` (our temporary DAGSTER_HOME)."""
    pids = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
    return pids


def _wait_runs_idle(url: str, timeout: float = 120.0) -> None:
    """Let runs the daemon already launched finish, so stopping dagster dev leaves no run worker."""
    query = '{ runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING]}) ' \
            '{ ... on Runs { results { runId } } } }'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            runs = _graphql(url, query)["data"]["runsOrError"]["results"]
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, KeyError, TypeError):
            return
        if not runs:
            return
        time.sleep(2.0)


QUIESCE = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    sensors { sensorState { id status } }
    schedules { scheduleState { id status } }
} } } }
"""


def _stop_automation(url: str) -> None:
    """Turn every running sensor and schedule off, as an operator would before stopping the UI: a
    tick between the last idle check and SIGTERM would otherwise start a run during shutdown."""
    try:
        nodes = _graphql(url, QUIESCE)["data"]["repositoriesOrError"]["nodes"]
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, KeyError, TypeError):
        return
    for node in nodes:
        for sensor in node["sensors"]:
            if sensor["sensorState"]["status"] == "RUNNING":
                _graphql(url, "mutation($id: String) { stopSensor(id: $id) { __typename } }",
                         variables={"id": sensor["sensorState"]["id"]})
        for schedule in node["schedules"]:
            if schedule["scheduleState"]["status"] == "RUNNING":
                _graphql(url, "mutation($id: String) { stopRunningSchedule(id: $id) { __typename } }",
                         variables={"id": schedule["scheduleState"]["id"]})


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return "?"


def _stop(proc: subprocess.Popen[bytes], marker: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_GRACE_S)
    # A code server that dagster dev spawned while the first SIGTERM was on its way never got it:
    # tell the group again. One that still lingers exits when its heartbeat to the dead webserver
    # lapses (dagster dev starts them with a 45 s heartbeat timeout), so wait that long before
    # calling it a leak. Processes that left the group still carry our DAGSTER_HOME: find them by it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + CODE_SERVER_HEARTBEAT_S + STOP_GRACE_S
    while (left := _processes_with_env(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    described = {pid: _cmdline(pid) for pid in left}
    for pid in _processes_with_env(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived dagster dev: {described}"


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, demo_template: DemoHome) -> Iterator[Ui]:
    home = copy_home(demo_template, tmp_path_factory.mktemp("ui") / "home").home
    with snapshot(home) as con:
        works = sorted(r[0] for r in con.execute("SELECT work_id FROM works").fetchall())
        states = dict(con.execute("SELECT work_id, state FROM v_artifacts").fetchall())
    finished = {w for w, s in states.items() if s in ("INDEXED", "DEDUPED")}
    failed = {w for w, s in states.items() if s == "FAILED"}

    port = free_port()
    env = demo_env(home)
    env["DAGSTER_HOME"] = str(home / "dagster")
    env["DTKG_RUN_RECONCILE_INTERVAL_S"] = str(RECONCILE_INTERVAL_S)
    env["DTKG_CHECKS_INTERVAL_S"] = "5"
    log_path = home.parent / "dagster-dev.log"
    url = f"http://127.0.0.1:{port}/graphql"
    origin = OriginServer().start()
    origin.add_robots()
    serve_log = home.parent / "demo-serve.log"
    with open(serve_log, "wb") as log:
        serve = subprocess.Popen(
            [str(DTKG), "demo", "--serve"], cwd=REPO, env=demo_env(home), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(DAGSTER), "dev", "-w", "workspace.yaml", "-p", str(port), "-h", "127.0.0.1"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGTERM reaches it and its children
        )
    try:
        result: dict[str, Any] = {}
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"dagster dev exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            try:
                result = _graphql(url, QUERY)
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                result = {}
            if _loaded(result):
                break
            time.sleep(1.0)
        else:
            pytest.fail(f"UI not ready in {STARTUP_TIMEOUT_S:.0f} s: {result}\n{log_path.read_text()[-4000:]}")
        assert not result.get("errors"), result["errors"]
        yield Ui(home, result["data"], works, finished, failed, url, origin)
    finally:
        try:
            _stop_automation(url)
            _wait_runs_idle(url)
            _stop(proc, str(home / "dagster"))
        finally:
            keep = os.environ.get("DTKG_UI_SCREENSHOTS")
            if keep:  # logs and the ledger snapshot next to the screenshots, for reading after the run
                import shutil

                Path(keep).mkdir(parents=True, exist_ok=True)
                for f in (log_path, serve_log, home / "ledger.snapshot.duckdb"):
                    with contextlib.suppress(OSError):
                        shutil.copy(f, Path(keep) / f.name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(timeout=STOP_GRACE_S)
            origin.stop()


def test_artifact_pdfs_is_listed_with_the_demo_works_as_partitions(ui: Ui) -> None:
    keys = {tuple(n["assetKey"]["path"]) for n in ui.data["assetNodes"]}
    assert {("artifact_pdfs",), ("openalex_works",)} <= keys
    node = ui.data["assetNodeOrError"]
    assert node["isPartitioned"] is True
    assert len(ui.works) == 38  # the sample corpus's works that reach the ledger
    assert sorted(node["partitionKeys"]) == ui.works
    assert len(node["partitionKeys"]) == len(set(node["partitionKeys"]))


def test_partition_statuses_match_the_ledger(ui: Ui) -> None:
    node = ui.data["assetNodeOrError"]
    stats = node["partitionStats"]
    assert stats["numPartitions"] == len(ui.works)
    assert stats["numMaterialized"] == len(ui.finished) > 0
    assert stats["numFailed"] == len(ui.failed) > 0
    statuses = node["assetPartitionStatuses"]
    assert statuses["__typename"] == "DefaultPartitionStatuses"
    assert set(statuses["materializedPartitions"]) == ui.finished
    assert set(statuses["failedPartitions"]) == ui.failed


def test_checks_sensors_and_schedules_are_listed(ui: Ui) -> None:
    from dtkg_assets.definitions import defs

    repo_def = defs.get_repository_def()
    checks = ui.data["assetNodeOrError"]["assetChecksOrError"]
    assert checks["__typename"] == "AssetChecks"
    expected_checks = {k.name for k in repo_def.asset_graph.asset_check_keys if k.asset_key.path == ["artifact_pdfs"]}
    assert len(expected_checks) >= 1  # file matches the ledger, content is a PDF, right paper: one check
    assert {c["name"] for c in checks["checks"]} == expected_checks
    repos = ui.data["repositoriesOrError"]["nodes"]
    sensors = {s["name"] for r in repos for s in r["sensors"]}
    schedules = {s["name"] for r in repos for s in r["schedules"]}
    # New-work partitions, reconciliation, lease release; works refresh, revalidation.
    assert len(sensors) >= 3 and sensors == {s.name for s in repo_def.sensor_defs}
    assert len(schedules) >= 2 and schedules == {s.name for s in repo_def.schedule_defs}


# ---- backfills from the UI -------------------------------------------------------------------

# The mutation the UI's "Launch backfill" / "Materialize selected partitions" buttons send.
LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""

BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      assetBackfillData {
        assetBackfillStatuses {
          __typename
          ... on AssetPartitionsStatusCounts {
            assetKey { path } numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized
            numPartitionsFailed
          }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

PARTITIONS = """
query Partitions($failed: [String!], $fresh: [String!]) {
  assetNodeOrError(assetKey: {path: ["artifact_pdfs"]}) {
    ... on AssetNode {
      assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } }
      assetObservations(partitions: $failed) {
        partition description
        metadataEntries { label ... on TextMetadataEntry { text } }
      }
      staleStatusByPartition(partitions: $fresh)
    }
  }
  works: assetNodeOrError(assetKey: {path: ["openalex_works"]}) {
    ... on AssetNode { assetMaterializations(limit: 20) { description runId } }
  }
}
"""

RUNS = """
query Runs {
  runsOrError(limit: 200) {
    ... on Runs { results { runId jobName status tags { key value } } }
  }
}
"""

CHECKS = """
query Checks($name: String!) {
  assetCheckExecutions(assetKey: {path: ["artifact_pdfs"]}, checkName: $name, limit: 500) {
    status partition evaluation { partition success }
  }
}
"""

TICKS = """
query Ticks($name: String!) {
  sensorOrError(sensorSelector: {repositoryLocationName: "dtkg_assets.definitions",
                                 repositoryName: "__repository__", sensorName: $name}) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 20) { status skipReason runIds } } }
    ... on PythonError { message }
  }
}
"""


def _q(ui: Ui, query: str, **variables: Any) -> dict[str, Any]:
    result = _graphql(ui.url, query, variables=variables)
    assert not result.get("errors"), result["errors"]
    data: dict[str, Any] = result["data"]
    return data


def _launch(ui: Ui, keys: list[str]) -> str:
    params = {"assetSelection": [{"path": ["artifact_pdfs"]}], "partitionNames": keys, "fromFailure": False,
              "tags": []}
    launched = _q(ui, LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id: str = launched["backfillId"]
    return backfill_id


def _wait_backfill(ui: Ui, backfill_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backfill = _q(ui, BACKFILL, id=backfill_id)["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        if backfill["status"] not in ("REQUESTED", "CANCELING"):
            counts = backfill["assetBackfillData"]["assetBackfillStatuses"][0]
            return {"status": backfill["status"], **counts}
        time.sleep(2.0)
    pytest.fail(f"backfill {backfill_id} still running after {timeout:.0f} s")


def _ledger(ui: Ui) -> tuple[set[str], set[str]]:
    """(finished, failed) works per the published ledger snapshot."""
    with snapshot(ui.home) as con:
        states = dict(con.execute("SELECT work_id, state FROM v_artifacts").fetchall())
    return ({w for w, s in states.items() if s in ("INDEXED", "DEDUPED")},
            {w for w, s in states.items() if s == "FAILED"})


def _explain(ui: Ui, keys: list[str]) -> str:
    """The ledger's rows for `keys`, for assertion messages."""
    with snapshot(ui.home) as con:
        rows = con.execute(
            "SELECT work_id, state, failure_class, last_reason, left(last_error, 200), attempts FROM artifact_jobs "
            "WHERE work_id IN (SELECT unnest(?)) ORDER BY work_id, candidate_rank", [keys]
        ).fetchall()
    return "\n".join(map(str, rows))


def _partitions(ui: Ui, failed: list[str] | None = None, fresh: list[str] | None = None) -> dict[str, Any]:
    data = _q(ui, PARTITIONS, failed=failed or [], fresh=fresh or [])
    node: dict[str, Any] = data["assetNodeOrError"]
    node["works"] = data["works"]["assetMaterializations"]
    return node


def _runs(ui: Ui) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = _q(ui, RUNS)["runsOrError"]["results"]
    for run in runs:
        run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
    return runs


def _assert_partitions_match_ledger(ui: Ui) -> None:
    finished, failed = _ledger(ui)
    statuses = _partitions(ui)["assetPartitionStatuses"]
    assert set(statuses["materializedPartitions"]) == finished
    assert set(statuses["failedPartitions"]) == failed


def _work_record(work_id: str, url: str) -> dict[str, Any]:
    location = {"is_oa": True, "pdf_url": url, "landing_page_url": None}
    return {"id": f"https://openalex.org/{work_id}", "doi": None, "title": f"Work {work_id}",
            "publication_year": 2024, "best_oa_location": location, "locations": [location],
            "open_access": {"is_oa": True, "oa_url": url}}


def test_backfills_from_the_ui_obey_the_user_and_match_the_ledger(ui: Ui) -> None:
    started = time.monotonic()
    timings: dict[str, float] = {}
    new = ["W8100000001", "W8100000002", "W8100000003"]  # the demo's works are W90…
    broken = "W8100000004"
    bodies = {w: pdf_bytes(30_000 + i * 1000, seed=100 + i) for i, w in enumerate([*new, broken])}
    records = [_work_record(w, ui.origin.add(f"/{w}.pdf", bodies[w])) for w in new]
    records.append(_work_record(broken, ui.origin.add(f"/{broken}.pdf", bodies[broken], FaultMode(status=404))))
    jsonl = ui.home.parent / "new-works.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    complete = sorted(ui.finished)[:4]
    stale_before = _partitions(ui, fresh=complete)["staleStatusByPartition"]

    # 1. Importing works is visible in Dagster and does not mark PDF partitions stale.
    imported = subprocess.run([str(DTKG), "works", "import", str(jsonl)], cwd=REPO, env=demo_env(ui.home),
                              capture_output=True, text=True, timeout=300, check=False)
    assert imported.returncode == 0, imported.stderr
    node = _partitions(ui, fresh=complete)
    assert any("dtkg works import" in (m["description"] or "") for m in node["works"]), node["works"]
    assert node["staleStatusByPartition"] == stale_before
    assert "STALE" not in node["staleStatusByPartition"]

    # 2. A backfill mixing new, complete and failing works, with every sensor on: it ends as the
    # ledger says, each partition too, and automation never touched its partitions.
    first = _launch(ui, [*new, broken, *complete[:2]])
    b1 = _wait_backfill(ui, first)
    timings["backfill_new_and_complete_s"] = time.monotonic() - started
    assert b1["status"] == "COMPLETED_FAILED", f"{b1}\n{_explain(ui, [*new, broken, *complete[:2]])}"
    assert (b1["numPartitionsTargeted"], b1["numPartitionsMaterialized"], b1["numPartitionsFailed"]) == (6, 5, 1)
    finished, failed = _ledger(ui)
    assert set(new) | set(complete[:2]) <= finished and broken in failed
    _assert_partitions_match_ledger(ui)
    for w in new:
        assert sha256_file(ui.home / "store" / "works" / f"{w}.pdf") == hashlib.sha256(bodies[w]).hexdigest()
    # The failed partition's own events carry its reason and what to do.
    observations = _partitions(ui, failed=[broken])["assetObservations"]
    assert observations, "no event on the failed partition"
    entries = {e["label"]: e.get("text") for e in observations[0]["metadataEntries"]}
    assert entries["reason"] == "http_404"
    assert "materialize the partition again" in (entries["what_to_do"] or "")
    assert "http_404" in (observations[0]["description"] or "")
    runs = _runs(ui)
    b1_runs = [r for r in runs if r["tags"].get("dagster/backfill") == first]
    assert b1_runs and all(r["tags"].get("dtkg/outcome") in ("stored", "data_failures") for r in b1_runs)
    assert sum(int(r["tags"]["dtkg/works_failed"]) for r in b1_runs) == 1
    assert sum(int(r["tags"]["dtkg/works_stored"]) for r in b1_runs) == 5
    automated = [r for r in runs if r["tags"].get("dtkg/requested_by") == "reconcile_sensor"]
    assert not automated, f"reconcile_sensor launched runs nobody needed: {automated}"
    assert not [r for r in runs if r["jobName"] == "release_leases_job"], "lease release runs for data failures"

    # 3. A backfill over complete partitions succeeds; a permanent failure whose URL was fixed is
    # stored when the user materializes it again; a deleted file is restored by a materialization.
    ui.origin.set_mode(f"/{broken}.pdf", FaultMode())
    deleted = complete[2]
    deleted_sha = sha256_file(ui.home / "store" / "works" / f"{deleted}.pdf")
    only_complete = _launch(ui, complete[:2])
    fixes = _launch(ui, [broken, deleted])
    # Deleted once the backfill is requested (no sensor may take it over), before its run starts.
    (ui.home / "store" / "works" / f"{deleted}.pdf").unlink()
    b2, b3 = _wait_backfill(ui, only_complete), _wait_backfill(ui, fixes)
    timings["backfills_complete_and_fixes_s"] = time.monotonic() - started
    assert b2["status"] == "COMPLETED_SUCCESS", f"{b2}\n{_explain(ui, complete[:2])}"
    assert b3["status"] == "COMPLETED_SUCCESS", f"{b3}\n{_explain(ui, [broken, deleted])}"
    finished, failed = _ledger(ui)
    assert broken in finished and deleted in finished
    assert sha256_file(ui.home / "store" / "works" / f"{broken}.pdf") == hashlib.sha256(bodies[broken]).hexdigest()
    assert sha256_file(ui.home / "store" / "works" / f"{deleted}.pdf") == deleted_sha
    _assert_partitions_match_ledger(ui)

    # 4. A deleted file is noticed and restored by the reconcile sensor within its interval (plus the
    # run that restores it).
    lost = complete[3]
    lost_path = ui.home / "store" / "works" / f"{lost}.pdf"
    lost_sha = sha256_file(lost_path)
    lost_path.unlink()
    t0 = time.monotonic()
    while time.monotonic() - t0 < RECONCILE_INTERVAL_S + 150 and not lost_path.exists():
        time.sleep(1.0)
    timings["reconcile_restore_s"] = time.monotonic() - t0
    assert lost_path.exists(), f"reconcile_sensor did not restore {lost} within {timings['reconcile_restore_s']:.0f} s"
    assert sha256_file(lost_path) == lost_sha
    redo = [r for r in _runs(ui) if r["tags"].get("dtkg/requested_by") == "reconcile_sensor"]
    assert redo and all(r["tags"].get("dagster/asset_partition_range_start") == lost for r in redo), redo

    # 5. Per-partition check results exist for the finished works (check runs after each download run).
    want = {*new, broken, deleted, lost}
    deadline = time.monotonic() + 120
    checked: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        checked = {}
        for name in ("artifact_pdf_verified",):
            executions = _q(ui, CHECKS, name=name)["assetCheckExecutions"]
            checked[name] = {e["partition"] for e in executions if e["status"] == "SUCCEEDED" and e["evaluation"]}
        if all(want <= keys for keys in checked.values()):
            break
        time.sleep(3.0)
    timings["checks_s"] = time.monotonic() - started
    for name, keys in checked.items():
        assert want <= keys, f"{name}: no passing evaluation for {sorted(want - keys)}"

    # 6. Sensor ticks say what they did.
    ticks = _q(ui, TICKS, name="reconcile_sensor")["sensorOrError"]
    assert ticks["__typename"] == "Sensor", ticks
    reasons = [t["skipReason"] for t in ticks["sensorState"]["ticks"] if t["status"] == "SKIPPED"]
    assert reasons and all(r and "empty result" not in r for r in reasons), reasons
    print(f"ui timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    shots = os.environ.get("DTKG_UI_SCREENSHOTS")
    if shots:
        b1_run = next(r["runId"] for r in b1_runs if r["tags"].get("dtkg/outcome") == "data_failures")
        _screenshots(ui, Path(shots), first, b1_run)


def _screenshots(ui: Ui, out: Path, backfill_id: str, run_id: str) -> None:
    """Headless Chromium renders of the pages users look at (for reviewing the UI by eye; not asserted)."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    base = ui.url.removesuffix("/graphql")
    failed_demo = sorted(ui.failed)[0]
    pages = {
        "failed-partition": f"/assets/artifact_pdfs?view=partitions&partition={failed_demo}",
        "runs": "/runs",
        "backfill": f"/runs/b/{backfill_id}?tab=partitions",
        "checks": "/assets/artifact_pdfs?view=checks",
        "data-failure-run": f"/runs/{run_id}",
        "automation": "/automation",
        "sensor-reconcile": "/locations/__repository__@dtkg_assets.definitions/sensors/reconcile_sensor",
    }
    for name, path in pages.items():
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--screenshot={out / (name + '.png')}", "--window-size=1400,900", "--virtual-time-budget=15000",
             base + path],
            capture_output=True, timeout=120, check=False,
        )
