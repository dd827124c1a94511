"""Named crash points for crash-recovery tests.

``DTKG_CRASH_AT=name`` kills the process (SIGKILL, no cleanup, no flush) the first time
``crash_point(name)`` runs; ``DTKG_CRASH_AT=name:n`` kills it once the counter for ``name`` reaches
``n``. Each call adds ``amount`` (default 1), so ``crash_point("body_bytes", len(chunk))`` with
``DTKG_CRASH_AT=body_bytes:1000000`` dies after about a million body bytes. Several points can be
given separated by commas. Unset (the normal case) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "DTKG_CRASH_AT"

_lock = threading.Lock()
_counts: dict[str, int] = {}
_targets: dict[str, int] | None = None
_env_seen: str | None = None


def _parse(text: str) -> dict[str, int]:
    targets: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        # Names may contain ':' (effect_done:FINALIZE); only a trailing number is a count.
        name, _, n = item.rpartition(":")
        if name and n.strip().isdigit():
            targets[name.strip()] = int(n)
        else:
            targets[item] = 1
    return targets


def crash_point(name: str, amount: int = 1) -> None:
    """Die here (SIGKILL to self) when the environment asks for it; otherwise do nothing."""
    global _targets, _env_seen
    text = os.environ.get(ENV)
    if not text:
        return
    with _lock:
        if _targets is None or text != _env_seen:
            _targets, _env_seen = _parse(text), text
            _counts.clear()
        target = _targets.get(name)
        if target is None:
            return
        _counts[name] = _counts.get(name, 0) + amount
        if _counts[name] < target:
            return
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # not reached: SIGKILL cannot be caught

