"""Every `dtkg` subcommand against a damaged home: missing, read-only, a corrupt ledger, a full disk.

No command may end in a Python traceback: bad input or state exits 2 with a message that names the
file and what to do, failed work exits 1. Read-only commands keep working on a full disk and on a
read-only home. The read-only home and the full disk are real tmpfs mounts (this suite runs as root).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtkg_assets.cli import build_parser
from dtkg_assets_tests.conftest import loopback_env

READERS = {"status", "ledger health", "ledger validate", "ledger export"}


def subcommands() -> list[str]:
    """Every leaf subcommand the parser knows (so a new one cannot skip this test)."""
    names: list[str] = []

    def walk(parser, prefix: str) -> None:  # type: ignore[no-untyped-def]
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}".strip())
                return
        names.append(prefix)

    walk(build_parser(), "")
    return names


def argv_for(command: str, tmp: Path, origin_url: str) -> list[str]:
    extra = {
        "fetch": [origin_url, "--work-id", "W9"],
        "works import": [str(tmp / "works.jsonl")],
        "works query": ["--filter", "publication_year:2024", "--max", "3"],
        "works download": [],
        "works retry": ["--all"],
        "ledger export": ["--out", str(tmp / "export-out")],
        "backfill": ["--limit", "1"],
    }
    return [*command.split(), *extra.get(command, [])]


def run(home: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = loopback_env(home, DTKG_LEDGER_WRITER_WAIT_S="2", DTKG_OFFLINE="0",
                       DTKG_OPENALEX_BASE_URL="http://127.0.0.1:9", OPENALEX_API_KEY="k",
                       DTKG_HTTP_MAX_ATTEMPTS="1")
    return subprocess.run([sys.executable, "-m", "dtkg_assets.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=240, check=False)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt))
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def populate(home: Path, tmp: Path, origin_url: str) -> None:
    (tmp / "works.jsonl").write_text(
        json.dumps({"id": "https://openalex.org/W1", "best_oa_location": {"pdf_url": origin_url}}) + "\n")
    for argv in (["works", "import", str(tmp / "works.jsonl")], ["works", "download"]):
        proc = run(home, argv)
        assert proc.returncode == 0, proc.stderr


def fill(directory: Path) -> None:
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.mark.parametrize("damage", ["missing", "read-only", "corrupt", "full"])
def test_every_subcommand_on_a_damaged_home(damage: str, tmp_path: Path, tmpfs: Path, origin, pdf_bytes) -> None:
    url = origin.add("/w1.pdf", pdf_bytes(20_000, 1))
    (tmp_path / "works.jsonl").write_text(
        json.dumps({"id": "https://openalex.org/W2", "best_oa_location": {"pdf_url": url}}) + "\n")
    home = tmpfs / "home"
    if damage == "missing":
        home = tmp_path / "no" / "such" / "home"
    else:
        populate(home, tmp_path, url)
        if damage == "read-only":
            sh("mount", "-o", "remount,ro", str(tmpfs))
        elif damage == "corrupt":
            (home / "ledger.duckdb").write_bytes(os.urandom(50_000))
        elif damage == "full":
            fill(tmpfs)

    commands = subcommands()
    assert {"fetch", "status", "ledger repair", "works import"} <= set(commands)
    for command in commands:
        if command == "demo" and damage == "missing":
            continue  # a fresh home is the demo's normal start (tested in test_demo)
        if command == "ledger repair" and damage == "corrupt":
            continue  # last, below
        proc = run(home, argv_for(command, tmp_path, url))
        out = proc.stdout + proc.stderr
        where = f"{damage}: dtkg {command} (exit {proc.returncode})\n{out}"
        assert "Traceback" not in out, where
        assert proc.returncode in (0, 1, 2), where
        if proc.returncode == 2:
            assert str(home) in out or "DTKG_HOME" in out or command in ("works query",), where
        reader = command in READERS
        if damage in ("read-only", "full") and reader:
            assert proc.returncode == 0, where  # read-only commands need no free disk, no write access
        if damage in ("read-only", "full", "corrupt") and not reader and command not in ("works query",):
            # On a full disk a writer with nothing to write (reconcile of a healthy home) succeeds.
            assert proc.returncode == 2 or (damage == "full" and proc.returncode == 0), where
            words = {"read-only": ("writable", "read-only"), "full": ("disk full", "no space left"),
                     "corrupt": ("dtkg ledger repair",)}[damage]
            assert any(w in out.lower() for w in words), where
        if damage == "corrupt":
            assert proc.returncode == 2 and "dtkg ledger repair" in out, where

    if damage == "corrupt":
        proc = run(home, ["ledger", "repair"])
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
        assert run(home, ["ledger", "health"]).returncode == 0


def test_a_damaged_dagster_storage_is_named_with_what_to_do(tmp_path: Path, origin, pdf_bytes) -> None:
    """Dagster's SQLite index (runs, partitions) overwritten with garbage: `dtkg backfill` names the
    directory and what to do, exit 2, no traceback; moving it aside as told lets the backfill run."""
    url = origin.add("/w1.pdf", pdf_bytes(20_000, 1))
    home = tmp_path / "home"
    populate(home, tmp_path, url)  # W1 stored, Dagster's storage created
    index = home / "dagster" / "history" / "runs" / "index.db"
    assert index.is_file()
    index.write_bytes(os.urandom(8192))
    (tmp_path / "more.jsonl").write_text(json.dumps(
        {"id": "https://openalex.org/W2", "best_oa_location": {"pdf_url": origin.add("/w2.pdf", pdf_bytes(9_000, 2))}})
        + "\n")
    assert run(home, ["works", "import", str(tmp_path / "more.jsonl")]).returncode == 0  # the ledger is fine
    proc = run(home, ["backfill"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert f"Dagster's storage in {home / 'dagster'} is damaged" in out and "history aside" in out, out
    (home / "dagster" / "history").rename(tmp_path / "history.damaged")
    proc = run(home, ["backfill", "--json"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["materialized"] == 1


def test_a_full_disk_without_a_file_name_in_the_error_names_the_home(tmpfs: Path) -> None:
    """`dtkg demo` in a home on a disk too small for the sample corpus: the write that fails (on an
    open file, whose error carries no file name) is reported in words naming the home, not a traceback."""
    home = tmpfs / "home"
    proc = run(home, ["demo"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert f"the files under DTKG_HOME ({home})" in out and "No space left on device" in out, out


def test_a_ledger_write_on_a_full_disk_is_reason_disk_full(tmpfs: Path) -> None:
    """A write transaction that cannot grow the ledger's WAL (the disk filled during a run) raises the
    ledger's disk_full error naming the file, not DuckDB's raw IOException; what was committed stays."""
    from dtkg_assets.core.ledger import Ledger, LedgerDiskFull
    from dtkg_assets.core.settings import Settings
    from dtkg_assets.core.types import Candidate, WorkRecord

    def works(start: int, n: int) -> list[WorkRecord]:
        return [WorkRecord(work_id=f"W{i}",
                           candidates=[Candidate(url=f"http://127.0.0.1:9/{i}.pdf", source="best_oa_location.pdf_url")])
                for i in range(start, start + n)]

    settings = Settings().with_home(tmpfs / "home")
    led = Ledger.open_writer(settings, owner="test")
    led.plan(works(0, 10))
    fill(tmpfs)
    with pytest.raises(LedgerDiskFull) as raised:
        led.plan(works(10, 20_000))
    assert raised.value.reason == "disk_full" and str(settings.ledger_path) in str(raised.value)
    (tmpfs / "filler").unlink()
    with contextlib.suppress(Exception):  # DuckDB closes a connection whose checkpoint failed for good
        led.close()
    with Ledger.open_writer(settings, owner="test") as again:  # what was committed before is kept
        assert again.query("SELECT count(*) FROM works")[0][0] >= 10


def test_a_download_that_fills_the_disk_is_disk_full_and_keeps_only_a_resumable_part(
        tmp_path: Path, tmpfs: Path, origin, pdf_bytes) -> None:  # type: ignore[no-untyped-def]
    """A body of unknown length (no quota estimate) runs the store's filesystem (16 MiB) out of space
    mid-stream, before its first checkpoint: reason disk_full naming the filesystem and what to do,
    exit 1. Bytes that no sidecar can record are not kept: they held the last free space and the next
    fetch threw them away (a part without a sidecar). Whatever part is kept, its sidecar records all
    of it, and once the filesystem is larger the next fetch resumes from exactly that."""
    from dtkg_assets.core.streaming import PartState
    from dtkg_assets_tests.support.origin import FaultMode

    body = pdf_bytes(20_000_000, 5)
    url = origin.add("/big.pdf", body, FaultMode(omit_content_length=True))
    env = loopback_env(tmp_path / "home", DTKG_STORE_DIR=str(tmpfs), DTKG_LEDGER_RETRY_BACKOFF_S="0")
    argv = [sys.executable, "-m", "dtkg_assets.cli", "fetch", url, "--work-id", "W1", "--json"]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stdout + first.stderr
    failed = json.loads(first.stdout)
    assert failed["reason"] == "disk_full", failed
    assert str(tmpfs) in failed["detail"] and "free space there" in failed["detail"], failed
    kept = 0
    for part in tmpfs.rglob("*.part"):
        state = PartState.read(part.with_name(part.name + ".json"))
        assert state is not None and state.bytes_on_disk == part.stat().st_size, (part.stat().st_size, state)
        kept += state.bytes_on_disk
    sh("mount", "-o", "remount,size=64m", str(tmpfs))
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["resumed_from"] == kept
    assert (tmpfs / "works" / "W1.pdf").read_bytes() == body
