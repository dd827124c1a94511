"""`dtkg backfill`'s asset checks in a second process: one check run per finished download run,
while the next batch downloads.

Checks after the last download run left the second core idle while the downloads ran and added
their whole time to the end. In this process they can not overlap: two Dagster runs executing at
once in one Python process deadlock on the logging module's locks (a run's start reconfigures
logging while the other run's event handler holds its lock). A spawned process (not forked: the
backfill has threads) has its own logging, its own Dagster instance on the same $DAGSTER_HOME (its
event writes go through SQLite's file locking like the webserver's), and reads the ledger's
published snapshot, which each download run publishes before it ends.

The parent sends the range of each finished download run; the worker runs the check job over it and,
asked for its report at the end, sends the summed `CheckReport`. SIGINT is ignored in the worker (a
terminal's Ctrl-C reaches the parent, which decides); SIGTERM ends the current check run early
(unreached works stay unevaluated), like a stop request in the parent. If the parent dies, the pipe
closes and the worker exits after its current run.
"""

from __future__ import annotations

import multiprocessing
import signal
from multiprocessing.connection import Connection
from typing import Any

from dtkg_assets.cli.common import start_helper_process
from dtkg_assets.cli.launch import CheckReport


def _serve(conn: Connection, command: str) -> None:
    from dtkg_assets.cli.common import load_settings
    from dtkg_assets.cli.launch import checks_job, dagster_instance, read_partition_keys_behind, run_check_range
    from dtkg_assets.core import deadline

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, _frame: deadline.request_stop(signal.Signals(signum).name))
    settings = load_settings()
    instance = dagster_instance(settings)
    read_partition_keys_behind(instance)  # while the first batch downloads, not in its check run
    job = checks_job(settings)
    report = CheckReport()
    with instance:
        while not deadline.stop_requested():
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if message is None:
                conn.send(report)
                return
            start, end = message
            report.add(run_check_range(instance, job, start, end, command))


class CheckWorker:
    """The parent's handle: `submit` a finished range, `report` at the end, `stop` on a stop request."""

    def __init__(self, command: str = "backfill") -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc: Any = ctx.Process(target=_serve, args=(child, command), name="dtkg-checks", daemon=True)
        start_helper_process(self._proc)
        child.close()
        self._broken = False

    def submit(self, start: str, end: str) -> None:
        if not self._broken:
            try:
                self._conn.send((start, end))
            except OSError:
                self._broken = True

    def report(self) -> CheckReport | None:
        """The summed report of every submitted range, after the last check run ended; None when the
        worker died before sending it (the caller then runs the checks itself)."""
        try:
            if self._broken:
                return None
            self._conn.send(None)
            reply = self._conn.recv()
            return reply if isinstance(reply, CheckReport) else None
        except (EOFError, OSError):
            return None
        finally:
            self._close(timeout=30)

    def stop(self) -> None:
        """End the current check run early and the worker with it (an idle worker sees the pipe close)."""
        self._conn.close()
        if self._proc.is_alive():
            self._proc.terminate()  # SIGTERM: a stop request in the worker
        self._close(timeout=30)

    def _close(self, timeout: float) -> None:
        self._conn.close()
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
