"""The UI `dagster dev` serves after a demo: its GraphQL endpoint lists `artifact_pdfs` with
exactly the demo's works as partitions, materialized and failed exactly as the ledger says, with
its checks, sensors and schedules.

`dagster dev` started from a non-interactive process ignores SIGTERM/SIGINT unless it has its own
session, so it is started with `start_new_session=True` and stopped by process group; any process
still carrying this test's DAGSTER_HOME afterwards is killed by pid.
"""

from __future__ import annotations

import contextlib
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

from dtkg_assets_tests.test_demo import demo_env, free_port, run_demo, snapshot

REPO = Path(__file__).resolve().parents[1]
DAGSTER = Path(sys.executable).with_name("dagster")
STARTUP_TIMEOUT_S = 180.0  # webserver, daemon and a code server on a loaded 2-core machine
STOP_GRACE_S = 30.0

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


@dataclass
class Ui:
    home: Path
    data: dict[str, Any]
    works: list[str]
    finished: set[str]
    failed: set[str]


def _graphql(url: str, query: str, timeout: float = 30.0) -> dict[str, Any]:
    body = json.dumps({"query": query}).encode()
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


def _stop(proc: subprocess.Popen[bytes], marker: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_GRACE_S)
    # Children that left the group (none expected) still carry our DAGSTER_HOME: kill them by pid.
    deadline = time.monotonic() + STOP_GRACE_S
    while (left := _processes_with_env(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _processes_with_env(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived dagster dev: {left}"


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    home = tmp_path_factory.mktemp("ui") / "home"
    run_demo(home)
    with snapshot(home) as con:
        works = sorted(r[0] for r in con.execute("SELECT work_id FROM works").fetchall())
        states = dict(con.execute("SELECT work_id, state FROM v_artifacts").fetchall())
    finished = {w for w, s in states.items() if s in ("INDEXED", "DEDUPED")}
    failed = {w for w, s in states.items() if s == "FAILED"}

    port = free_port()
    env = demo_env(home)
    env["DAGSTER_HOME"] = str(home / "dagster")
    log_path = home.parent / "dagster-dev.log"
    url = f"http://127.0.0.1:{port}/graphql"
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
        yield Ui(home, result["data"], works, finished, failed)
    finally:
        _stop(proc, str(home / "dagster"))


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
    assert len(expected_checks) >= 2  # file matches the ledger; content is a PDF
    assert {c["name"] for c in checks["checks"]} == expected_checks
    repos = ui.data["repositoriesOrError"]["nodes"]
    sensors = {s["name"] for r in repos for s in r["sensors"]}
    schedules = {s["name"] for r in repos for s in r["schedules"]}
    # New-work partitions, reconciliation, lease release; works refresh, revalidation.
    assert len(sensors) >= 3 and sensors == {s.name for s in repo_def.sensor_defs}
    assert len(schedules) >= 2 and schedules == {s.name for s in repo_def.schedule_defs}
