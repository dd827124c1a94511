"""Operator-level faults with real `dtkg` processes against the loopback origin: slow and stalled
servers, kills and signals mid-download, bad input. Outcomes are asserted on the origin's counters,
the files, the ledger and the command's words and exit code (never a traceback)."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from dtkg_assets.core.streaming import PartState
from dtkg_assets_tests.conftest import loopback_env
from dtkg_assets_tests.support.origin import FaultMode, OriginServer

DTKG = [sys.executable, "-m", "dtkg_assets.cli"]


def dtkg(home: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DTKG, *args], capture_output=True, text=True, env=loopback_env(home, **env),
                          timeout=timeout)


def start(home: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*DTKG, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=loopback_env(home, **env))


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def write_works(path: Path, works: dict[str, str]) -> Path:
    with path.open("w") as fh:
        for wid, url in works.items():
            fh.write(json.dumps({"id": f"https://openalex.org/{wid}", "best_oa_location": {"pdf_url": url}}) + "\n")
    return path


def ledger_rows(home: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(home / "ledger.snapshot.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def sidecars(home: Path) -> list[PartState]:
    return [s for p in (home / "staging").glob("*.json") if (s := PartState.read(p)) is not None]


def no_traceback(proc: subprocess.CompletedProcess[str] | subprocess.Popen[str], err: str) -> None:
    assert "Traceback" not in err, err


# ---- item 1: deadlines ----------------------------------------------------------------------


def test_trickled_body_ends_at_the_deadline_and_keeps_the_part(origin: OriginServer, tmp_path: Path,
                                                               pdf_bytes: Callable[[int, int], bytes]) -> None:
    body = pdf_bytes(400_000, 1)
    url = origin.add("/trickle.pdf", body, FaultMode(rate_bytes_per_s=40_000))
    home = tmp_path / "home"
    t0 = time.monotonic()
    proc = dtkg(home, "fetch", url, "--work-id", "W1", "--json", DTKG_HTTP_ATTEMPT_DEADLINE_S="1.5",
                DTKG_HTTP_MAX_ATTEMPTS="1", DTKG_LEDGER_RETRY_BACKOFF_S="0")
    elapsed = time.monotonic() - t0
    no_traceback(proc, proc.stderr)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["reason"] == "timeout" and "deadline of 1.5 s" in data["detail"]
    assert elapsed < 1.5 + 8.0  # the deadline, plus process start-up on a busy machine
    kept = sum(s.bytes_on_disk for s in sidecars(home))
    assert 0 < kept <= origin.stats("/trickle.pdf").body_bytes
    # The server recovers: the next fetch resumes from the kept bytes, nothing is fetched twice.
    origin.set_mode("/trickle.pdf", FaultMode())
    again = dtkg(home, "fetch", url, "--work-id", "W1", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["resumed_from"] == kept
    assert origin.stats("/trickle.pdf").ranges[-1] == f"bytes={kept}-"
    assert hashlib.sha256((home / "store" / "works" / "W1.pdf").read_bytes()).digest() == hashlib.sha256(body).digest()


def test_trickled_header_block_ends_at_the_deadline(origin: OriginServer, tmp_path: Path,
                                                    pdf_bytes: Callable[[int, int], bytes]) -> None:
    url = origin.add("/slowhead.pdf", pdf_bytes(50_000, 2), FaultMode(slow_headers_s=0.2))
    t0 = time.monotonic()
    proc = dtkg(tmp_path / "home", "fetch", url, "--json",
                DTKG_HTTP_ATTEMPT_DEADLINE_S="1.5", DTKG_HTTP_MAX_ATTEMPTS="1")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1 and json.loads(proc.stdout)["reason"] == "timeout", proc.stdout + proc.stderr
    assert elapsed < 1.5 + 8.0
    no_traceback(proc, proc.stderr)


def test_stalled_robots_txt_does_not_hold_other_hosts(origin: OriginServer, tmp_path: Path,
                                                      pdf_bytes: Callable[[int, int], bytes]) -> None:
    """robots.txt of one host trickles its headers: that host's works end with `timeout` at the
    deadline (one robots request, its verdict shared), the other host's works are stored."""
    origin.add("/robots.txt", b"User-agent: *\nAllow: /\n",
               FaultMode(content_type="text/plain", slow_headers_s=0.5))
    stalled = {f"W{i}": origin.add(f"/s{i}.pdf", pdf_bytes(20_000 + i, i)) for i in range(1, 5)}
    with OriginServer().start() as good:
        good.add_robots()
        bodies = {f"W{i}": pdf_bytes(30_000 + i, i) for i in range(5, 7)}
        # "localhost": another host name for the limiter, breakers and robots cache.
        fine = {w: good.add(f"/{w}.pdf", b).replace("127.0.0.1", "localhost") for w, b in bodies.items()}
        works = write_works(tmp_path / "works.jsonl", {**stalled, **fine})
        home = tmp_path / "home"
        t0 = time.monotonic()
        proc = dtkg(home, "works", "download", str(works), "--workers", "4", "--json",
                    DTKG_HTTP_ROBOTS_ENABLED="1", DTKG_HTTP_ATTEMPT_DEADLINE_S="2", DTKG_HTTP_MAX_ATTEMPTS="1")
        elapsed = time.monotonic() - t0
    no_traceback(proc, proc.stderr)
    assert proc.returncode == 1 and "4 works failed this run and are retried later (timeout 4)" in proc.stderr
    assert elapsed < 2 + 8.0, elapsed
    for w, b in bodies.items():
        assert (home / "store" / "works" / f"{w}.pdf").read_bytes() == b
    reasons = dict(ledger_rows(home, "SELECT work_id, last_reason FROM artifact_jobs WHERE work_id IN "
                                     "('W1','W2','W3','W4')"))
    assert set(reasons.values()) == {"timeout"}, reasons
    assert origin.stats("/robots.txt").requests == 1
    assert sum(origin.stats(f"/s{i}.pdf").requests for i in range(1, 5)) == 0


def test_trickling_host_gives_its_workers_back(origin: OriginServer, tmp_path: Path,
                                               pdf_bytes: Callable[[int, int], bytes]) -> None:
    """Bodies at 20 KB/s on one host: each attempt that spends its deadline is not retried in place
    (default 4 attempts) and counts against the host's breaker, so after two the host's other works
    are deferred at once and the other host's works are stored without waiting behind them."""
    slow = {f"W{i}": origin.add(f"/t{i}.pdf", pdf_bytes(400_000 + i, i), FaultMode(rate_bytes_per_s=20_000))
            for i in range(1, 7)}
    with OriginServer().start() as good:
        bodies = {f"W{i}": pdf_bytes(30_000 + i, i) for i in range(7, 9)}
        fine = {w: good.add(f"/{w}.pdf", b).replace("127.0.0.1", "localhost") for w, b in bodies.items()}
        works = write_works(tmp_path / "works.jsonl", {**slow, **fine})
        home = tmp_path / "home"
        t0 = time.monotonic()
        proc = dtkg(home, "works", "download", str(works), "--workers", "2", "--json",
                    DTKG_HTTP_ATTEMPT_DEADLINE_S="1.5", DTKG_HTTP_BREAKER_FAIL_MAX="2")
        elapsed = time.monotonic() - t0
    no_traceback(proc, proc.stderr)
    for w, b in bodies.items():
        assert (home / "store" / "works" / f"{w}.pdf").read_bytes() == b
    reasons = dict(ledger_rows(home, "SELECT work_id, last_reason FROM artifact_jobs"))
    assert sorted(reasons[w] for w in slow) == ["breaker_open"] * 4 + ["timeout"] * 2, reasons
    assert proc.returncode == 1 and "(breaker_open 4, timeout 2)" in proc.stderr, proc.stderr
    assert sum(origin.stats(f"/t{i}.pdf").get_requests for i in range(1, 7)) == 2  # one attempt each
    assert elapsed < 1.5 + 8.0, elapsed  # was 6 works x 4 attempts x 1.5 s / 2 workers = 18 s


# ---- item 2: a file counts only when it hashes to what the ledger expects --------------------


def test_fetch_of_a_complete_work_whose_file_has_a_flipped_byte_downloads_it_again(
        origin: OriginServer, tmp_path: Path, pdf_bytes: Callable[[int, int], bytes]) -> None:
    """`dtkg fetch` answered "already complete" for a corrupted file, and once the work was redone it
    deduplicated against the corrupted blob (same size) and reported it stored."""
    body = pdf_bytes(50_000, 12)
    url = origin.add("/flip.pdf", body)
    home = tmp_path / "home"
    assert dtkg(home, "fetch", url, "--work-id", "W1").returncode == 0
    work = home / "store" / "works" / "W1.pdf"
    data = bytearray(work.read_bytes())
    data[len(data) // 2] ^= 0x01
    work.write_bytes(bytes(data))  # in place: the blob is the same inode, flipped too
    again = dtkg(home, "fetch", url, "--work-id", "W1", "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["status"] == "stored" and result["decision"] == "fresh", result
    assert origin.stats("/flip.pdf").get_requests == 2
    want = hashlib.sha256(body).hexdigest()
    assert hashlib.sha256(work.read_bytes()).hexdigest() == want
    assert hashlib.sha256((home / "store" / want[:2] / f"{want}.pdf").read_bytes()).hexdigest() == want
    assert ledger_rows(home, "SELECT state, sha256 FROM artifact_jobs") == [("INDEXED", want)]


# ---- item 3: checkpoints by time -------------------------------------------------------------


@pytest.mark.serial
def test_kill_9_mid_slow_download_resends_at_most_one_checkpoint(origin: OriginServer, tmp_path: Path,
                                                                pdf_bytes: Callable[[int, int], bytes]) -> None:
    rate = 1_000_000
    body = pdf_bytes(3_000_000, 3)
    url = origin.add("/slow.pdf", body, FaultMode(rate_bytes_per_s=rate))
    home = tmp_path / "home"
    child = start(home, "fetch", url, "--work-id", "W3", "--json", DTKG_IO_CHECKPOINT_INTERVAL_S="0.5")
    wait_for(lambda: origin.stats("/slow.pdf").body_bytes >= 1_600_000)
    child.kill()
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    time.sleep(0.3)  # the origin takes back what its failed last send did not deliver
    served_first = origin.stats("/slow.pdf").body_bytes
    durable = max(s.bytes_on_disk for s in sidecars(home))
    origin.set_mode("/slow.pdf", FaultMode())
    again = dtkg(home, "fetch", url, "--work-id", "W3", "--json")
    assert again.returncode == 0, again.stderr
    served_second = origin.stats("/slow.pdf").body_bytes - served_first
    one_checkpoint = int(rate * 0.5) + 256 * 1024  # half a second of body, plus socket buffers
    assert served_second == len(body) - durable
    assert served_second <= len(body) - served_first + one_checkpoint, (served_first, durable, served_second)
    assert (home / "store" / "works" / "W3.pdf").read_bytes() == body
    print(f"kill -9 after {served_first} bytes: {durable} durable, {served_second} re-sent of {len(body)}")


# ---- item 4: SIGINT / SIGTERM ----------------------------------------------------------------


@pytest.mark.serial
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_download_keeps_part_and_reports(origin: OriginServer, tmp_path: Path, signum: int,
                                                      pdf_bytes: Callable[[int, int], bytes]) -> None:
    fast, slow = pdf_bytes(200_000, 4), pdf_bytes(3_000_000, 5)
    urls = {"W1": origin.add("/fast.pdf", fast),
            "W2": origin.add("/slow.pdf", slow, FaultMode(rate_bytes_per_s=300_000))}
    works = write_works(tmp_path / "works.jsonl", urls)
    home = tmp_path / "home"
    child = start(home, "works", "download", str(works), "--workers", "2")
    wait_for(lambda: (home / "store" / "works" / "W1.pdf").exists() and origin.stats("/slow.pdf").body_bytes > 400_000)
    t0 = time.monotonic()
    child.send_signal(signum)
    out, err = child.communicate(timeout=30)
    stop_s = time.monotonic() - t0
    assert "Traceback" not in err, err
    assert child.returncode == 128 + signum, (child.returncode, err)
    assert stop_s < 3.0, stop_s  # "within a couple of seconds"
    name = signal.Signals(signum).name
    assert f"stopped by {name}: 1 works stored" in err and "interrupted W2" in err and "W1" in err, err
    # The lease is given back (PLANNED, no owner, no attempt held against it) and the part is durable.
    assert ledger_rows(home, "SELECT state, lease_owner, last_reason FROM artifact_jobs WHERE work_id = 'W2'") == [
        ("PLANNED", None, None)]
    kept = max(s.bytes_on_disk for s in sidecars(home))
    assert kept > 400_000
    origin.set_mode("/slow.pdf", FaultMode())
    again = dtkg(home, "works", "download", str(works), "--json")
    assert again.returncode == 0, again.stderr
    assert origin.stats("/slow.pdf").ranges[-1] == f"bytes={kept}-"
    assert (home / "store" / "works" / "W2.pdf").read_bytes() == slow
    assert origin.stats("/fast.pdf").get_requests == 1
    print(f"{name}: stopped in {stop_s:.2f} s with {kept} bytes kept")


@pytest.mark.serial
def test_sigint_during_fetch_exits_130_with_words(origin: OriginServer, tmp_path: Path,
                                                  pdf_bytes: Callable[[int, int], bytes]) -> None:
    url = origin.add("/stall.pdf", pdf_bytes(100_000, 6), FaultMode(stall_s=60, stall_after_bytes=50_000))
    home = tmp_path / "home"
    child = start(home, "fetch", url)
    wait_for(lambda: origin.stats("/stall.pdf").body_bytes >= 50_000)
    time.sleep(0.3)  # the client is now blocked in a socket read
    t0 = time.monotonic()
    child.send_signal(signal.SIGINT)
    _out, err = child.communicate(timeout=30)
    assert time.monotonic() - t0 < 3.0
    assert child.returncode == 130 and "Traceback" not in err, err
    assert "interrupted" in err and "run the same command again to resume" in err
    assert max(s.bytes_on_disk for s in sidecars(home)) == 50_000


# ---- item 7: bad input at import --------------------------------------------------------------


def test_import_reports_bad_urls_and_ids_with_line_and_keeps_the_rest(tmp_path: Path) -> None:
    works = tmp_path / "works.jsonl"
    lines = [
        {"id": "W1", "best_oa_location": {"pdf_url": "http://host:99999/x.pdf"}},
        {"id": "W2", "best_oa_location": {"pdf_url": "http://[::1/x.pdf"}},
        {"id": "W3", "best_oa_location": {"pdf_url": "https://example.org/ok.pdf"}},
        {"id": "W" + "7" * 300, "best_oa_location": {"pdf_url": "https://example.org/long.pdf"}},
    ]
    works.write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = dtkg(tmp_path / "home", "works", "import", str(works), "--json")
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc, proc.stderr)
    assert f"{works}:1: bad_input:" in proc.stderr and "99999" in proc.stderr
    assert f"{works}:2: bad_input:" in proc.stderr and "[::1" in proc.stderr
    assert f"{works}:4: bad_input:" in proc.stderr and "too long" in proc.stderr
    assert json.loads(proc.stdout)["works"] == 1
    assert ledger_rows(tmp_path / "home", "SELECT work_id FROM works") == [("W3",)]


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"", "empty"),
        ('{"id": "W1", "best_oa_location": {"pdf_url": "https://e.org/a.pdf"}}\n'.encode("utf-16"), "UTF-16"),
        (bytes(range(256)) * 16, "binary"),
    ],
    ids=["empty", "utf16", "binary"],
)
def test_import_of_nothing_usable_exits_2_and_names_the_cause(tmp_path: Path, content: bytes, cause: str) -> None:
    works = tmp_path / "works.jsonl"
    works.write_bytes(content)
    proc = dtkg(tmp_path / "home", "works", "import", str(works))
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc, proc.stderr)
    assert f"no usable work in {works}" in proc.stderr and cause in proc.stderr


def test_a_50_mb_line_is_skipped_without_taking_the_memory(tmp_path: Path) -> None:
    works = tmp_path / "works.jsonl"
    with works.open("w") as fh:
        fh.write(json.dumps({"id": "W1", "abstract": "x" * 50_000_000,
                             "best_oa_location": {"pdf_url": "https://e.org/a.pdf"}}) + "\n")
        fh.write(json.dumps({"id": "W2", "best_oa_location": {"pdf_url": "https://e.org/b.pdf"}}) + "\n")
    # VmHWM is this process's own peak (ru_maxrss would include the forking pytest process's).
    code = ("import re, sys; from dtkg_assets.cli import main; rc = main(sys.argv[1:]); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "works", "import", str(works)], capture_output=True,
                          text=True, env=loopback_env(tmp_path / "home"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{works}:1: bad_input: line of" in proc.stderr
    max_rss_kib = int(proc.stderr.strip().splitlines()[-1])
    assert max_rss_kib < 300 * 1024, max_rss_kib  # was about 620 MiB
    assert ledger_rows(tmp_path / "home", "SELECT work_id FROM works") == [("W2",)]


def test_a_query_that_cannot_reach_openalex_is_failed_work(tmp_path: Path) -> None:
    """Nothing could be read: exit 1 with the reason in words (it said 0 works and exited 0)."""
    proc = dtkg(tmp_path / "home", "works", "query", "--filter", "publication_year:2024", "--max", "3",
                DTKG_OPENALEX_BASE_URL="http://127.0.0.1:9", OPENALEX_API_KEY="k", DTKG_HTTP_MAX_ATTEMPTS="1")
    no_traceback(proc, proc.stderr)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "stopped early, connect_error" in proc.stderr, proc.stderr


# ---- item 8: HTML wrapped as a PDF -------------------------------------------------------------


def test_login_page_wrapped_as_pdf_is_not_stored(origin: OriginServer, tmp_path: Path) -> None:
    page = (b"%PDF-1.4\n<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>"
            + b"<input name=user>" * 200 + b"</form></body></html>\n%%EOF\n")
    url = origin.add("/login.pdf", page)
    proc = dtkg(tmp_path / "home", "fetch", url, "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["reason"] == "html_page" and "wrapped in a %PDF- header" in data["detail"]
    assert not list((tmp_path / "home" / "store").rglob("*.pdf"))


# ---- item 10: smaller ones ---------------------------------------------------------------------


def test_empty_work_id_is_a_usage_error(tmp_path: Path) -> None:
    proc = dtkg(tmp_path / "home", "fetch", "http://127.0.0.1:9/a.pdf", "--work-id", "")
    assert proc.returncode == 2 and "work id ''" in proc.stderr, proc.stderr
    no_traceback(proc, proc.stderr)


def test_retry_after_is_honoured_by_the_ledger_and_printed_as_a_time(origin: OriginServer, tmp_path: Path) -> None:
    url = origin.add("/busy.pdf", b"x", FaultMode(status=503, retry_after="900"))
    home = tmp_path / "home"
    # Default in-place retries (4) and cap (60 s): a 900 s Retry-After is not slept in place but
    # handed to the ledger at once (one request).
    env = {"DTKG_HTTP_BREAKER_FAIL_MAX": "0", "DTKG_HTTP_RETRY_AFTER_CAP_S": "60"}
    t0 = time.time()
    first = dtkg(home, "fetch", url, "--work-id", "W1", "--json", **env)
    assert json.loads(first.stdout)["reason"] == "http_5xx"
    assert time.time() - t0 < 10
    (next_at,) = ledger_rows(home, "SELECT next_eligible_at FROM artifact_jobs")[0]
    assert 900 - 5 <= next_at - t0 <= 900 + 30  # the server's 900 s, not the ledger's 60 s backoff
    second = dtkg(home, "fetch", url, "--work-id", "W1", **env)
    assert second.returncode == 1 and "UTC (in 15 min)" in second.stdout, second.stdout
    assert str(int(next_at)) not in second.stdout
    assert origin.stats("/busy.pdf").requests == 1  # the deferred retry sent nothing
    # A bogus Retry-After is capped by the ledger's longest backoff.
    origin.add("/forever.pdf", b"x", FaultMode(status=503, retry_after="99999999"))
    env["DTKG_HTTP_MAX_ATTEMPTS"] = "1"
    dtkg(home, "fetch", origin.url("/forever.pdf"), "--work-id", "W2", **env, DTKG_LEDGER_RETRY_BACKOFF_MAX_S="600")
    (far,) = ledger_rows(home, "SELECT next_eligible_at FROM artifact_jobs WHERE work_id = 'W2'")[0]
    assert far - time.time() <= 600


def test_lock_path_that_is_a_directory_gives_a_message(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "ledger.lock").mkdir(parents=True)
    works = write_works(tmp_path / "works.jsonl", {"W1": "https://e.org/a.pdf"})
    for args in (["works", "import", str(works)], ["reconcile"], ["fetch", "https://e.org/a.pdf"]):
        proc = dtkg(home, *args)
        no_traceback(proc, proc.stderr)
        assert proc.returncode in (1, 2), (args, proc.returncode, proc.stderr)
        assert "ledger.lock" in proc.stderr and "directory" in proc.stderr.lower(), (args, proc.stderr)
        assert "move it away" in proc.stderr and "writable" not in proc.stderr.split(";")[0], (args, proc.stderr)
    for args in (["ledger", "health"], ["status"]):  # readers never take the lock
        proc = dtkg(home, *args)
        no_traceback(proc, proc.stderr)


def test_a_home_that_is_a_file_is_said_once_not_as_a_damaged_ledger(tmp_path: Path) -> None:
    """DTKG_HOME naming a file (or a path below one) was reported as a damaged ledger.lock, with
    `dtkg ledger repair` as the remedy, by every writer including repair itself."""
    blocker = tmp_path / "home"
    blocker.write_text("not a directory")
    cases = [(blocker, ["fetch", "https://e.org/a.pdf"]), (blocker, ["ledger", "repair"]), (blocker, ["status"]),
             (blocker / "sub", ["works", "download"])]
    for home, args in cases:
        proc = dtkg(home, *args)
        no_traceback(proc, proc.stderr)
        assert proc.returncode == 2 and proc.stdout == "", (args, proc.stdout, proc.stderr)
        assert f"DTKG_HOME {home}" in proc.stderr and "a file, not a directory" in proc.stderr, proc.stderr
        assert "repair" not in proc.stderr, proc.stderr
    assert blocker.read_text() == "not a directory"


# ---- item 9: credentials in URLs ---------------------------------------------------------------


def test_credentials_in_urls_are_sent_but_never_kept(origin: OriginServer, tmp_path: Path,
                                                     pdf_bytes: Callable[[int, int], bytes]) -> None:
    body = pdf_bytes(60_000, 9)
    url = origin.add("/private.pdf", body).replace("http://", "http://reader:s3cret-pw@")
    token_url = origin.add("/token.pdf", pdf_bytes(61_000, 10)).replace("http://", "http://tok3n-abc@")
    # Secret query parameters (`?token=`, `api_key=` …): the same rules, the value back in the query.
    query_urls = {"W3": origin.add("/q1.pdf", pdf_bytes(40_000, 21)) + "?id=7&token=qt0k-s3cret",
                  "W4": origin.add("/q2.pdf", pdf_bytes(41_000, 22)) + "?api_key=k3y-s3cret&v=2"}
    works = write_works(tmp_path / "works.jsonl", {"W1": url, "W2": token_url, **query_urls})
    home = tmp_path / "home"
    proc = dtkg(home, "works", "download", str(works), "--json")
    assert proc.returncode == 0, proc.stderr
    assert origin.stats("/q1.pdf").queries == ["id=7&token=qt0k-s3cret"]
    assert origin.stats("/q2.pdf").queries == ["api_key=k3y-s3cret&v=2"]
    # Used for the request, as Basic auth ...
    expected = "Basic " + base64.b64encode(b"reader:s3cret-pw").decode()
    assert origin.stats("/private.pdf").authorizations == [expected]
    assert origin.stats("/token.pdf").authorizations == ["Basic " + base64.b64encode(b"tok3n-abc:").decode()]
    assert (home / "store" / "works" / "W1.pdf").read_bytes() == body
    # ... and kept nowhere else: ledger columns, snapshot, export, output, part sidecars.
    urls = ledger_rows(home, "SELECT url FROM artifact_jobs ORDER BY work_id")
    assert [u for (u,) in urls] == [url.replace("s3cret-pw", "***"), token_url.replace("tok3n-abc", "***"),
                                    query_urls["W3"].replace("qt0k-s3cret", "***"),
                                    query_urls["W4"].replace("k3y-s3cret", "***")]
    export = tmp_path / "export"
    assert dtkg(home, "ledger", "export", "--out", str(export)).returncode == 0
    dump = dtkg(home, "fetch", url, "--work-id", "W1", "--json")
    assert dump.returncode == 0 and json.loads(dump.stdout)["decision"] == "already_complete"
    texts = [proc.stdout, proc.stderr, dump.stdout, dump.stderr]
    texts += [p.read_text(errors="replace") for p in export.iterdir()]
    texts += [str(r) for r in ledger_rows(home, "SELECT raw::VARCHAR, candidates::VARCHAR FROM works")]
    texts += [str(r) for r in ledger_rows(home, "SELECT url FROM http_attempts")]
    for path in (home / "ledger.duckdb", home / "ledger.snapshot.duckdb"):
        texts.append(path.read_bytes().decode("latin-1"))
    texts += [p.read_text() for p in (home / "staging").glob("*.json")]
    for text in texts:
        assert "s3cret" not in text and "tok3n-abc" not in text
    vault = home / "credentials.json"
    assert vault.stat().st_mode & 0o077 == 0 and "s3cret-pw" in vault.read_text()
    assert "qt0k-s3cret" in vault.read_text() and "k3y-s3cret" in vault.read_text()
    # A URL given on the command line: same rules.
    origin.add("/cli.pdf", pdf_bytes(62_000, 11))
    cli_url = origin.url("/cli.pdf").replace("http://", "http://me:cl1-pw@")
    one = dtkg(home, "fetch", cli_url, "--json")
    assert one.returncode == 0, one.stderr
    assert "cl1-pw" not in one.stdout + one.stderr and json.loads(one.stdout)["url"].startswith("http://me:***@")
    assert origin.stats("/cli.pdf").authorizations == ["Basic " + base64.b64encode(b"me:cl1-pw").decode()]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://e.org/a.pdf?download=1", "https://e.org/a.pdf?download=1"),
        ("https://e.org/a.pdf?id=7&token=abc&x=1", "https://e.org/a.pdf?id=7&token=***&x=1"),
        ("https://u:p@e.org/a.pdf?API_KEY=k#top", "https://u:***@e.org/a.pdf?API_KEY=***#top"),
        ("https://s3.example/a?X-Amz-Signature=ab%2F&X-Amz-Date=1", "https://s3.example/a?X-Amz-Signature=***&X-Amz-Date=1"),
        ("https://e.org/a?mytoken=abc&token=", "https://e.org/a?mytoken=abc&token="),  # not a secret name / empty
        ("http://[::1/x.pdf?sig=zz", "http://[::1/x.pdf?sig=***"),  # malformed: reported back, still masked
    ],
)
def test_secret_query_parameters_are_redacted(url: str, shown: str) -> None:
    from dtkg_assets.core.credentials import has_credentials, is_redacted, redact_url

    assert redact_url(url) == shown
    assert has_credentials(url) == (shown != url) == is_redacted(shown)


# ---- the CLI-wide promise: words and exit 2 for bad input, never a traceback --------------------

BAD_INPUT = [
    ["fetch", "http://[::1/x.pdf"],
    ["fetch", "http://h:99999/x.pdf"],
    ["fetch", "https://e.org/a.pdf", "--work-id", "../x"],
    ["works", "import", "/nonexistent.jsonl"],
    ["works", "import", "/tmp"],
    ["works", "query", "--filter", "x", "--per-page", "0"],
    ["works", "download", "--workers", "0"],
    ["backfill", "--limit", "0"],
    ["demo", "--port", "99999"],
    ["ledger"],
    ["no-such-command"],
]


@pytest.mark.parametrize("args", BAD_INPUT, ids=[" ".join(a) for a in BAD_INPUT])
def test_bad_input_is_exit_2_with_words(tmp_path: Path, args: list[str]) -> None:
    proc = dtkg(tmp_path / "home", *args)
    no_traceback(proc, proc.stderr)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.strip() and proc.stdout == ""


def test_unusable_paths_are_named_with_what_to_do(tmp_path: Path) -> None:
    home = tmp_path / "home"
    works = write_works(tmp_path / "works.jsonl", {"W1": "https://e.org/a.pdf"})
    assert dtkg(home, "works", "import", str(works)).returncode == 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = dtkg(home, "ledger", "export", "--out", str(blocker))
    no_traceback(proc, proc.stderr)
    assert proc.returncode == 1 and str(blocker) in proc.stderr and "move it away" in proc.stderr, proc.stderr
    proc = dtkg(home, "status", DTKG_HTTP_MAX_ATTEMPTS="many")
    assert proc.returncode == 2 and "DTKG_HTTP_MAX_ATTEMPTS" in proc.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """`dtkg … | head`: the closed pipe is not "cannot use: Broken pipe; check the file and the disk"."""
    child = start(tmp_path / "home", "status", "--json")
    assert child.stdout is not None
    child.stdout.close()  # before the command prints anything
    _out, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGPIPE, (child.returncode, err)
    assert "Traceback" not in err and "Broken pipe" not in err and "Exception ignored" not in err, err


@pytest.mark.serial
def test_sigterm_while_waiting_for_the_ledger_exits_at_once(tmp_path: Path) -> None:
    """Not downloading (here: waiting for the writer lock another process holds): stop right away."""
    home = tmp_path / "home"
    works = write_works(tmp_path / "works.jsonl", {"W1": "https://e.org/a.pdf"})
    assert dtkg(home, "works", "import", str(works)).returncode == 0
    with (home / "ledger.lock").open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        child = start(home, "works", "import", str(works))
        time.sleep(1.5)  # started, read the works file, now in its wait for the lock
        assert child.poll() is None
        t0 = time.monotonic()
        child.send_signal(signal.SIGTERM)
        _out, err = child.communicate(timeout=30)
    assert time.monotonic() - t0 < 3.0
    assert child.returncode == 143 and "interrupted" in err and "Traceback" not in err, err


@pytest.mark.serial
def test_sigint_during_a_dagster_backfill_stops_the_run(origin: OriginServer, tmp_path: Path,
                                                        pdf_bytes: Callable[[int, int], bytes]) -> None:
    """Dagster replaces the signal handler while a run executes and raises its interrupt in the step:
    the downloads stop anyway, the parts are kept, no further batch starts, words not a traceback."""
    urls = {f"W{i}": origin.add(f"/b{i}.pdf", pdf_bytes(2_000_000 + i, i), FaultMode(rate_bytes_per_s=200_000))
            for i in range(1, 5)}
    home = tmp_path / "home"
    assert dtkg(home, "works", "import", str(write_works(tmp_path / "works.jsonl", urls))).returncode == 0
    child = start(home, "backfill", "--workers", "2")
    wait_for(lambda: sum(origin.stats(f"/b{i}.pdf").body_bytes for i in range(1, 5)) >= 300_000, timeout=60)
    t0 = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    stop_s = time.monotonic() - t0
    assert "Traceback" not in out + err, err
    assert child.returncode == 130 and stop_s < 3.0, (child.returncode, stop_s, err[-2000:])
    assert "stopped by interrupt" in out and "parts are kept" in out, out
    assert {s for (s,) in ledger_rows(home, "SELECT state FROM artifact_jobs")} == {"PLANNED"}
    assert sum(s.bytes_on_disk for s in sidecars(home)) > 0
    print(f"backfill SIGINT: stopped in {stop_s:.2f} s")
