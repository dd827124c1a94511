"""Helpers shared by the benchmarks (bench/stream.py, bench/batch.py)."""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MiB = 1024 * 1024
# The smallest end a PDF validation accepts: a trailer, startxref and %%EOF.
PDF_HEAD, PDF_TAIL = b"%PDF-1.7\n", b"\ntrailer\n<< /Size 1 >>\nstartxref\n9\n%%EOF\n"


def make_pdf(path: Path, size: int, rng: random.Random | None = None) -> str:
    """Random bytes wrapped as a PDF (deterministic when `rng` is given); returns its sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        f.write(PDF_HEAD)
        h.update(PDF_HEAD)
        left = size - len(PDF_HEAD) - len(PDF_TAIL)
        while left > 0:
            n = min(8 * MiB, left)
            block = rng.randbytes(n) if rng is not None else os.urandom(n)
            f.write(block)
            h.update(block)
            left -= len(block)
        f.write(PDF_TAIL)
        h.update(PDF_TAIL)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def dtkg_cmd() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "dtkg"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dtkg_assets.cli"]


def machine_busy_s() -> float:
    """CPU seconds every process of the machine has spent so far (all cores; idle and I/O wait
    apart), from /proc/stat: with the origin and the databases on the same cores, what a phase
    costs the machine as a whole."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


LAST_CPU_S: list[float] = [0.0]  # CPU seconds (user + system) of the last `run_measured` process


def run_measured(
    cmd: list[str], env: dict[str, str] | None = None, shell: bool = False, cwd: Path | None = None
) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) of the process tree's largest child, stdout. Raises on a
    non-zero exit. The process's CPU seconds are left in `LAST_CPU_S[0]`."""
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, shell=shell, cwd=cwd)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    LAST_CPU_S[0] = usage.ru_utime + usage.ru_stime
    if proc.stdout:
        proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {out[-2000:]}")
    return wall, int(usage.ru_maxrss), out
