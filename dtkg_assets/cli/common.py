"""Plumbing every `dtkg` command shares: exit codes, `UsageError`, settings, printing a result,
turning an exception into one message and an exit code, SIGINT/SIGTERM, and `run` (parse, dispatch).

Exit codes: 0 success, 1 the work failed, 2 bad input or configuration, 130/143 stopped by
SIGINT/SIGTERM. No command ends in a Python traceback: `run` turns every exception into one message
that names the command, the input or file, and what to do (``DTKG_DEBUG=1`` prints the traceback as
well). SIGINT and SIGTERM ask running downloads to stop (`core.deadline.request_stop`): parts are
kept, leases given back, and the command reports what was stored and what was interrupted; a second
signal exits at once.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from dtkg_assets.core.errors import Reason
from dtkg_assets.core.settings import Settings, SettingsError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SIGNAL_BASE = 128  # 130 after SIGINT, 143 after SIGTERM (the shell convention)


# Tables and progress of the commands that have them (demo, backfill, status).
console = Console(stderr=False)


class UsageError(Exception):
    """Bad input from the user: printed as is, exit code 2."""


def load_settings() -> Settings:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise UsageError(f"dtkg: {exc}") from None
    _check_directory(settings.home, "DTKG_HOME")
    if settings.shared_store is not None:
        _check_directory(settings.shared_store, "DTKG_STORE_DIR")
    return settings


def _check_directory(path: Path, name: str) -> None:
    """A state directory (created when missing) must not be, or lie under, a file: said here once
    rather than as a damaged ledger or a failed mkdir deep inside a command."""
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if os.path.lexists(existing) and not existing.is_dir():
        where = "is" if existing == path else f"lies under {existing}, which is"
        raise UsageError(f"dtkg: {name} {path} {where} a file, not a directory: point {name} at a directory "
                         "(it is created when missing) or move the file away")


def print_result(data: Any, as_json: bool, human: str) -> None:
    print(json.dumps(data, sort_keys=True, default=str) if as_json else human)


def stopped_exit_code() -> int:
    """130 after SIGINT, 143 after SIGTERM (1 if the stop came from elsewhere)."""
    from dtkg_assets.core import deadline

    reason = deadline.stop_reason() or ""
    if reason == deadline.INTERRUPT:  # the signal itself was caught by Dagster: Ctrl-C's code
        return EXIT_SIGNAL_BASE + signal.SIGINT
    try:
        return EXIT_SIGNAL_BASE + int(signal.Signals[reason])
    except KeyError:
        return EXIT_FAILED


def _install_stop_handlers() -> None:
    """First SIGINT/SIGTERM: ask downloads to stop and let the command report; second: exit now."""
    from dtkg_assets.core import deadline

    def handle(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if deadline.stop_requested():
            print(f"dtkg: {name} again: exiting now (the next run resumes parts and frees leases)",
                  file=sys.stderr, flush=True)
            os._exit(EXIT_SIGNAL_BASE + signum)
        deadline.request_stop(name)
        if not deadline.in_stoppable():
            # Not downloading (waiting for the ledger lock, importing, reporting): stop right here.
            raise KeyboardInterrupt
        print(f"dtkg: {name}: stopping (parts are kept for resume; {name} again exits at once)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def describe_error(command: str, exc: BaseException) -> tuple[str, int]:
    """One message and exit code for an exception that reached `main`: words instead of a traceback."""
    from dtkg_assets.core.errors import DtkgError
    from dtkg_assets.core.ledger.storage import LedgerError

    if isinstance(exc, LedgerError):  # busy, damaged, full, unwritable: the message names file and remedy
        return f"{command}: {exc}", EXIT_USAGE
    if isinstance(exc, DtkgError):
        code = EXIT_USAGE if exc.reason in (Reason.BAD_INPUT, Reason.UNSUPPORTED_SCHEME) else EXIT_FAILED
        return f"{command}: {exc.reason.value}: {exc.detail or exc}", code
    if isinstance(exc, OSError):
        where = f" {exc.filename!r}" if exc.filename else ""
        if not where and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
            # A write on an open file names none: the disk is the home's (or the store's, under it).
            where = f" the files under DTKG_HOME ({Path(os.environ.get('DTKG_HOME', '.dtkg')).absolute()})"
        what = exc.strerror or str(exc)
        hint = {
            errno.ENOSPC: "free some space on that filesystem (or point DTKG_HOME elsewhere) and run it again",
            errno.EDQUOT: "free some space within your quota and run it again",
            errno.EACCES: "fix the permissions (or point DTKG_HOME at a directory you can write) and run it again",
            errno.EPERM: "fix the permissions (or point DTKG_HOME at a directory you can write) and run it again",
            errno.EROFS: "the filesystem is read-only: point DTKG_HOME at a writable directory",
            errno.EISDIR: "a directory is where a file is expected: move it away and run it again",
            errno.ENOTDIR: "a file is where a directory is expected: move it away and run it again",
            errno.ENOENT: "check that the path exists",
            errno.EEXIST: "something else is already there: choose another path or move it away",
        }.get(exc.errno or 0, "check the file and the disk, then run it again")
        return f"{command}: cannot use{where}: {what}; {hint}", EXIT_FAILED
    if type(exc).__module__.split(".")[0].lstrip("_") == "duckdb":
        return (f"{command}: the ledger could not be used ({type(exc).__name__}: {exc}); "
                "see `dtkg ledger health`, and `dtkg ledger repair` to recover"), EXIT_FAILED
    if (damage := _damaged_sqlite(exc)) is not None:
        # Dagster's SQLite storage (runs, events, partitions) under DAGSTER_HOME: dtkg's own record is
        # the ledger, so that storage can start afresh.
        where = os.environ.get("DAGSTER_HOME") or "$DTKG_HOME/dagster"
        return (f"{command}: Dagster's storage in {where} is damaged ({damage}): move {where}/history "
                "aside and run it again; the ledger keeps every download, Dagster's run history starts "
                "afresh, and `dagster dev`'s work_partitions_sensor lists the works' partitions again"), EXIT_USAGE
    return (f"{command}: unexpected error {type(exc).__name__}: {exc} (a bug: please report it with "
            "the output of the same command run with DTKG_DEBUG=1)"), EXIT_FAILED


def _damaged_sqlite(exc: BaseException) -> str | None:
    """SQLite's words when `exc` (or the driver error SQLAlchemy wraps) says a database file is not
    one, or is malformed."""
    import sqlite3

    error = getattr(exc, "orig", None) or exc
    text = str(error)
    if isinstance(error, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return text
    return None


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, run the subcommand's handler, and turn whatever it raises into words and an exit code."""
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _install_stop_handlers()
    command = f"dtkg {args.command}" + (f" {_action(args)}" if _action(args) else "")
    try:
        return func(args)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader of our output went away (`dtkg status | head`): stop quietly, as a shell tool
        # killed by SIGPIPE does, and keep Python from complaining when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_SIGNAL_BASE + signal.SIGPIPE
    except KeyboardInterrupt:
        from dtkg_assets.core import deadline

        print(f"{command}: interrupted; run it again to finish", file=sys.stderr)
        return stopped_exit_code() if deadline.stop_requested() else EXIT_SIGNAL_BASE + signal.SIGINT
    except Exception as exc:  # the promise: words, not a traceback (DTKG_DEBUG=1 shows it too)
        if os.environ.get("DTKG_DEBUG"):
            traceback.print_exc()
        message, code = describe_error(command, exc)
        print(message, file=sys.stderr)
        return code


def _action(args: argparse.Namespace) -> str:
    for name in ("ledger_command", "works_command"):
        value = getattr(args, name, None)
        if value:
            return str(value)
    return ""


def start_helper_process(process: Any) -> None:
    """Start a spawned helper process (`dtkg backfill`'s checks, `dtkg works import`'s partitions) with
    SIGINT ignored from birth (kept across exec, and Python keeps it so): a terminal's Ctrl-C reaches
    the whole process group, and the parent decides; the helper must not print a traceback, even while
    it still imports."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        process.start()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
