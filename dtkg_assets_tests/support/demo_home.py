"""Running `dtkg demo` from tests, and one demo home shared by the modules that start from one.

`dtkg demo` takes about half a minute; the UI, notebook, export and demo tests all start from the
same finished demo home. The session makes it once (`demo_template` in conftest.py) and each module
works on a copy (`copy_home`), the way an operator copies a home: the ledger keeps paths relative to
DTKG_HOME, and `cp -a` keeps the store's hard links (a work file and its blob stay one inode).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

REPO = Path(__file__).resolve().parents[2]
DTKG = Path(sys.executable).with_name("dtkg")
DEMO_TIMEOUT_S = 600  # generous: a loaded 2-core machine; an idle one needs about 20 s


@dataclass(frozen=True)
class DemoHome:
    """A home after one `dtkg demo` run, its `--json` summary, and the origin port the works point at."""

    home: Path
    summary: dict[str, Any]
    port: int


def demo_env(home: Path) -> dict[str, str]:
    """The caller's environment with DTKG_HOME set; other DTKG_* and DAGSTER_HOME dropped so a
    developer's own configuration cannot change what the demo does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTKG_") and k != "DAGSTER_HOME"}
    env["DTKG_HOME"] = str(home)
    return env


def run_dtkg(home: Path, *args: str, timeout: float = DEMO_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DTKG), *args],
        cwd=REPO,
        env=demo_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_demo(home: Path, port: int = 0) -> dict[str, Any]:
    """`dtkg demo --json`; returns its summary object (fails the test with the output otherwise)."""
    proc = run_dtkg(home, "demo", "--port", str(port), "--json")
    assert proc.returncode == 0, f"dtkg demo exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-4000:]  # not even from its origin's threads
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got:\n{proc.stdout}"
    data: dict[str, Any] = json.loads(lines[0])
    return data


def make_demo_home(home: Path) -> DemoHome:
    summary = run_demo(home)
    port = json.loads((home / "sample" / "origin.json").read_text())["port"]
    return DemoHome(home, summary, int(port))


def copy_home(template: DemoHome, home: Path) -> DemoHome:
    """A copy of the template's home at `home` (which must not exist yet), hard links kept."""
    home.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(template.home), str(home)], check=True)
    return DemoHome(home, template.summary, template.port)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot(home: Path) -> duckdb.DuckDBPyConnection:
    """The published snapshot, read-only, the way analysts open it."""
    return duckdb.connect(str(home / "ledger.snapshot.duckdb"), read_only=True)
