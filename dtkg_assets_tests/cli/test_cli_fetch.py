"""`dtkg fetch` as a real process against the local origin."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dtkg_assets.cli import default_work_id
from dtkg_assets.core.settings import MiB
from dtkg_assets_tests.conftest import loopback_env
from dtkg_assets_tests.support.origin import FaultMode, OriginServer

SIZE = 3 * MiB + 99


def run_fetch(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = loopback_env(home)
    return subprocess.run(
        [sys.executable, "-m", "dtkg_assets.cli", "fetch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_fetch_twice_downloads_once(
    origin: OriginServer, tmp_path: Path, pdf_bytes: Callable[[int, int], bytes]
) -> None:
    body = pdf_bytes(SIZE, 3)
    sha = hashlib.sha256(body).hexdigest()
    url = origin.add("/paper.pdf", body, FaultMode(truncate_after=MiB))
    home = tmp_path / "home"

    first = run_fetch(home, url, "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    for name in ("status", "reason", "decision", "sha256", "path", "bytes", "resumed_from", "attempts",
                 "elapsed_s", "mib_s"):
        assert name in data
    assert (data["status"], data["reason"], data["sha256"], data["bytes"]) == ("stored", "ok", sha, SIZE)
    assert (data["resumed_from"], data["attempts"], data["decision"]) == (MiB, 2, "resume")
    work = Path(data["path"])
    assert work == home.absolute() / "store" / "works" / f"{default_work_id(url)}.pdf"
    assert hashlib.sha256(work.read_bytes()).hexdigest() == sha
    assert origin.stats("/paper.pdf").body_bytes == SIZE

    origin.reset_stats()
    second = run_fetch(home, url, "--json")
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert (again["decision"], again["sha256"], again["path"]) == ("already_complete", sha, str(work))
    st = origin.stats("/paper.pdf")
    assert st.body_bytes == 0 and st.requests == 0

    human = run_fetch(home, url, "--work-id", "W42")
    assert human.returncode == 0 and "W42.pdf" in human.stdout and sha in human.stdout
    assert (home / "store" / "works" / "W42.pdf").stat().st_nlink == 3


def test_fetch_failure_exits_1_with_reason(origin: OriginServer, tmp_path: Path) -> None:
    url = origin.add("/page.pdf", b"x" * 5000, FaultMode(html_body=True))
    proc = run_fetch(tmp_path / "home", url, "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert (data["status"], data["reason"]) == ("failed", "bot_challenge")  # a "Just a moment…" wall
    assert not list((tmp_path / "home" / "store").rglob("*.pdf"))


@pytest.mark.parametrize("bad", ["ftp://example.org/a.pdf", "not a url", "http://"])
def test_bad_url_exits_2_with_a_clear_message(tmp_path: Path, bad: str) -> None:
    proc = run_fetch(tmp_path / "home", bad)
    assert proc.returncode == 2
    assert repr(bad) in proc.stderr and "http(s) URL" in proc.stderr
    assert proc.stdout == ""


def test_bad_work_id_exits_2(tmp_path: Path) -> None:
    proc = run_fetch(tmp_path / "home", "http://127.0.0.1:9/a.pdf", "--work-id", "../etc")
    assert proc.returncode == 2 and "'../etc'" in proc.stderr
