"""The streaming engine: one candidate URL -> a verified PDF in the content-addressed store.

Pipeline: resume decision (`resume`, from the `.part` and its `sidecar`) -> GET (ranged with `If-Range`
on a resume, see `ranges`), whose status and headers are the precheck (`validators`, size, type, quota)
before the first body byte -> raw bytes appended to the `.part` (`part`) with a rolling SHA-256 (`hashing`) ->
PDF validation -> atomic finalize into the store -> per-work link. One request per fresh artifact: a
HEAD is sent only where it saves bytes (see `Engine._wants_head`) or `http.head_precheck` asks for it.
Every step reports through `FetchHooks` so the orchestrator can record it in the ledger; on its own the
engine uses `NullHooks`. Every exchange is recorded and its failure mapped by `core.http_errors`.

Invariants:
- The rolling hash covers exactly the bytes on disk. On resume it is seeded by re-reading the
  part; preallocated space beyond the bytes written is cut off before hashing or finalizing.
- The sidecar never claims more bytes than are durable (`part.Download.checkpoint`): it is rewritten only after
  the part has been fsynced up to that point, so a crash resumes from bytes that really exist.
  While streaming, that fsync and sidecar write run on a helper thread (at most one in flight per
  download) so the body does not wait for the disk; the sidecar records the bytes written before the
  fsync began. A crash loses the bytes since the last finished checkpoint: one interval, two while
  the disk is slower than the network (the stream then waits for the checkpoint in flight).
- Only strong ETags and Last-Modified are sent in `If-Range` (nginx compares strongly; a weak
  ETag would make it send the whole body, and a lenient server could splice two versions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from dtkg_assets.core import deadline
from dtkg_assets.core.crashpoints import crash_point
from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.http import deadline_timeout, polite_transport
from dtkg_assets.core.http_errors import error_for_status, error_from_httpx, recorded_attempt
from dtkg_assets.core.pdf import validate_pdf
from dtkg_assets.core.retrying import retrying
from dtkg_assets.core.settings import MiB, Settings
from dtkg_assets.core.store import Store, check_work_id, sha256_file
from dtkg_assets.core.streaming.hashing import HASH_THREAD_MIN, HashPipe
from dtkg_assets.core.streaming.part import Download, write_rest
from dtkg_assets.core.streaming.ranges import artifact_headers, parse_content_range, unsatisfied_range_total
from dtkg_assets.core.streaming.resume import ResumeDecision, decide_resume
from dtkg_assets.core.streaming.sidecar import PartState
from dtkg_assets.core.streaming.validators import ServerValidators, head_precheck, int_or_none
from dtkg_assets.core.types import FetchHooks, FetchResult, NullHooks
from dtkg_assets.core.urls import check_url
from dtkg_assets.core.walls import response_refusal

PROGRESS_EVERY = 1 * MiB
# Durable checkpoint (fsync part + rewrite sidecar) at least every this many bytes while streaming;
# `io.checkpoint_interval_s` adds one by time, so a slow download loses at most that much on a crash.
CHECKPOINT_EVERY = 32 * MiB
# A response that contradicts the request (bad Content-Range, 416 with another total) restarts the
# download from zero; past this many restarts in one attempt the server is broken.
MAX_RESTARTS = 2


class _Restart(Exception):
    """The response contradicts what is on disk: truncate the part and ask again from zero."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Engine:
    """Downloads candidate URLs into the store. Thread-safe: share one Engine and one client."""

    def __init__(self, client: httpx.Client, settings: Settings, store: Store | None = None) -> None:
        self.client = client
        self.settings = settings
        self.store = store or Store(settings)

    # ---- public -------------------------------------------------------------------------------
    def fetch(
        self,
        url: str,
        *,
        work_id: str | None = None,
        hooks: FetchHooks | None = None,
        known_sha256: str | None = None,
        refresh: bool = False,
    ) -> FetchResult:
        """Fetch one URL. Expected failures come back as `FetchResult(status="failed", reason=...)`.

        `refresh` downloads even when the work's file is present (revalidation found a new version)."""
        hooks = hooks or NullHooks()
        t0 = time.perf_counter()
        result = FetchResult(status="failed", reason="", decision=None, url=url, work_id=work_id)
        try:
            check_url(url)
            if work_id is not None:
                check_work_id(work_id)
                if not refresh and self._already_complete(work_id, known_sha256, result):
                    return result
            self._fetch(url, work_id, hooks, result)
        except DtkgError as exc:
            if isinstance(exc, deadline.DeadlineSpent) and (transport := polite_transport(self.client)) is not None:
                transport.note_failure(url)
            self._fail(result, exc)
        except httpx.HTTPError as exc:
            self._fail(result, error_from_httpx(exc))
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._fail(result, DtkgError(
                Reason.DISK_FULL,
                f"no space left on the store's filesystem ({self.store.staging_dir}) after "
                f"{result.body_bytes_received} body bytes ({exc.strerror}); the part is kept up to its last "
                "checkpoint for resume: free space there (or move DTKG_STORE_DIR / DTKG_HOME to a larger disk) "
                "and run it again"))
        finally:
            result.elapsed_s = time.perf_counter() - t0 - result.slot_wait_s
            if result.elapsed_s > 0:
                result.mib_s = result.body_bytes_received / MiB / result.elapsed_s
        return result

    # ---- steps --------------------------------------------------------------------------------
    @staticmethod
    def _fail(result: FetchResult, exc: DtkgError) -> None:
        result.status = "failed"
        result.reason = exc.reason.value
        result.detail = exc.detail or None
        result.retry_after = exc.retry_after
        if exc.status is not None:
            result.http_status = exc.status

    def _already_complete(self, work_id: str, known_sha256: str | None, result: FetchResult) -> bool:
        """A finished work is answered from disk with no network, but only when its bytes hash to the
        sha256 the ledger expects (with no expectation: to a blob the store already holds under that
        hash). Anything else (a flipped byte, another version) is downloaded again."""
        store = self.store
        path = store.work_path(work_id)
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        sha = sha256_file(path)
        if known_sha256:
            if sha != known_sha256:
                return False
            blob = store.blob_path(sha)
            if not blob.exists():
                # The blob went missing but the work's bytes are intact: restore the address.
                blob.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.link(path, blob)
        else:
            blob = store.blob_path(sha)
            if not blob.exists() or (not os.path.samefile(blob, path) and sha256_file(blob) != sha):
                return False
            try:
                validate_pdf(path, self.settings.validation)
            except DtkgError:
                return False
        result.status = "stored"
        result.reason = "ok"
        result.decision = "already_complete"
        result.decision_reason = "work_file_present"
        result.sha256 = sha
        result.path = str(path)
        result.blob_path = str(store.blob_path(sha))
        result.bytes = st.st_size
        return True

    def _head(self, dl: Download) -> ServerValidators | None:
        for attempt in retrying(self.settings.http, defer_long_waits=True):
            with attempt, self._exchange(dl), deadline.attempt(deadline_timeout(self.settings)):
                return head_precheck(self.client, dl.url, dl.result.http_attempts)
        return None  # pragma: no cover - tenacity re-raises

    @staticmethod
    @contextlib.contextmanager
    def _exchange(dl: Download) -> Iterator[None]:
        """One HTTP exchange in a download slot (`FetchHooks.network`); the wait for the slot is
        counted apart, so `elapsed_s` and `mib_s` describe the download, not the queue."""
        t0 = time.perf_counter()
        with dl.hooks.network():
            dl.result.slot_wait_s += time.perf_counter() - t0
            yield

    def _wants_head(self, dl: Download, state: PartState | None) -> bool:
        """HEAD only where it can save bytes or a setting asks for it.

        A fresh download learns validators, size and type from its GET's headers before the first
        body byte, and a resume sends `If-Range` from the sidecar's validators (the server answers
        200 when the object changed). A HEAD saves bytes only for a part whose sidecar has no strong
        validator: it can show that the object changed before any body byte is fetched again."""
        if self.settings.http.head_precheck:
            return True
        if state is None or state.bytes_on_disk <= 0 or not dl.part.exists():
            return False  # nothing to resume: the GET decides
        return not (state.strong_etag or state.last_modified)

    def _reserve(self, dl: Download, remaining: int | None) -> None:
        """Reserve room for this download once (raises quota_exceeded before any body byte)."""
        if dl.reserved or dl.reservations is None:
            return
        dl.reservations.enter_context(self.store.quota.reserve(remaining))
        dl.reserved = True

    def _fetch(self, url: str, work_id: str | None, hooks: FetchHooks, result: FetchResult) -> None:
        settings, store = self.settings, self.store
        part, sidecar = store.part_paths(work_id, url)
        dl = Download(settings=settings, url=url, work_id=work_id, part=part, sidecar=sidecar, hooks=hooks,
                      result=result)
        state = PartState.read(sidecar)  # read once here; a retry reads what the last attempt left
        if self._finalized_before(dl, state):
            return

        validators = self._head(dl) if self._wants_head(dl, state) else None
        dl.validators = validators
        if validators is not None:
            result.etag, result.last_modified = validators.etag, validators.last_modified
            result.content_type, result.http_status = validators.content_type, validators.status
            result.final_url = validators.final_url
            hooks.stage("HEAD_DONE", {"validators": dataclasses.asdict(validators), "head_supported": True})
        max_bytes = settings.quota.max_bytes
        if validators is not None and validators.content_length is not None and validators.content_length > max_bytes:
            raise DtkgError(Reason.TOO_LARGE, f"Content-Length {validators.content_length} > max_bytes {max_bytes}")

        decision = self._decide(dl, state)
        hooks.stage("RESUME_OK", {"decision": decision.mode, "reason": decision.reason, "offset": decision.offset})

        with contextlib.ExitStack() as reservations:
            # The quota guard decides as soon as the size is known: here after a HEAD, else on the
            # GET's headers, before the first body byte is written (see `_reserve`).
            dl.reservations = reservations
            if validators is not None and validators.content_length is not None:
                self._reserve(dl, max(0, validators.content_length - decision.offset))
            else:
                # Size unknown until the GET: the free-space floor alone is checked before asking.
                reservations.enter_context(store.quota.reserve(None))
            for attempt in retrying(settings.http, defer_long_waits=True):
                with attempt, self._exchange(dl), deadline.attempt(deadline_timeout(settings)):
                    result.attempts += 1
                    if result.attempts > 1:
                        decision = self._decide(dl, PartState.read(sidecar))
                    self._attempt(dl, decision)

        sha = dl.hasher.hexdigest()
        result.sha256 = sha
        result.bytes = dl.pos
        try:
            validate_pdf(part, settings.validation)
        except DtkgError as exc:
            html = exc.reason is Reason.HTML_PAGE or "html" in (result.content_type or "").lower()
            if html and dl.pos <= settings.landing.max_html_bytes:
                body = part.read_bytes()
                # A landing page: its links are resolved without asking again. HTML wrapped in a %PDF-
                # header is a disguise, not a landing page: its reason stands.
                if body.lstrip()[:5] != b"%PDF-":
                    result.html = body
            store.discard_part(part, sidecar)
            raise
        hooks.check_fence()
        t_fin = time.perf_counter()
        fin = hooks.effect("FINALIZE", sha, lambda: self._finalize_effect(part, sha))
        result.fsync_s += time.perf_counter() - t_fin
        # Names follow from the hash and the work (a replayed effect's recorded path may predate a
        # move of the home).
        result.blob_path = str(store.blob_path(sha))
        self._link(dl, sha, created=bool(fin["created"]))

    def _link(self, dl: Download, sha: str, *, created: bool) -> None:
        """The per-work link, then drop the sidecar (until then it names the finalized blob)."""
        result, work_id = dl.result, dl.work_id
        if work_id is not None:
            dl.hooks.effect("LINK", f"{work_id}:{sha}", lambda: self._link_effect(work_id, sha))
            result.path = str(self.store.work_path(work_id))
        else:
            result.path = result.blob_path
        dl.sidecar.unlink(missing_ok=True)
        result.status = "stored" if created else "deduped"
        result.reason = "ok"

    def _finalized_before(self, dl: Download, state: PartState | None) -> bool:
        """A crash after the part was linked into the store but before the ledger commit: its sidecar
        (`state`) names the blob, and the part is gone or is the blob itself (killed between the link and
        the part's unlink). Verify the blob and finish from disk, with no request."""
        if state is None or not state.sha256 or state.url != dl.url:
            return False
        sha = state.sha256
        try:
            blob = self.store.blob_path(sha)
        except ValueError:
            return False
        if dl.part.exists() and not (blob.exists() and os.path.samefile(dl.part, blob)):
            return False
        if not self.store.verify(sha):
            dl.sidecar.unlink(missing_ok=True)  # the blob is gone or damaged: download again
            return False
        result = dl.result
        result.decision, result.decision_reason = "already_complete", "finalized_before_crash"
        result.sha256, result.bytes = sha, blob.stat().st_size
        result.etag, result.last_modified = state.etag, state.last_modified
        dl.hooks.effect("FINALIZE", sha, lambda: self._finalize_effect(dl.part, sha))
        result.blob_path = str(blob)
        self._link(dl, sha, created=True)
        return True

    def _finalize_effect(self, part: Path, sha: str) -> dict[str, Any]:
        fin = self.store.finalize(part, sha)
        return {"path": str(fin.path), "created": fin.created}

    def _link_effect(self, work_id: str, sha: str) -> dict[str, Any]:
        link = self.store.link_work(work_id, sha)
        return {"path": str(link.path), "mode": link.mode}

    def _decide(self, dl: Download, state: PartState | None) -> ResumeDecision:
        """What to do with the part, given its sidecar `state`."""
        try:
            st = dl.part.stat()
        except FileNotFoundError:
            size, names = 0, 1
        else:
            size, names = st.st_size, st.st_nlink
        if names > 1:
            # The part is also a blob's name (a crash between finalize's link and the part's unlink,
            # and the blob did not verify): never write into it; drop this name and start again.
            decision = ResumeDecision("discard_part", "part_is_a_stored_blob")
        else:
            decision = decide_resume(dl.validators, state, size, self.settings, url=dl.url)
        if decision.mode == "resume" and state is not None:
            dl.prefix_sha256, dl.prefix_bytes = state.prefix_sha256, state.prefix_bytes
            dl.total = state.expected_size
        dl.result.decision, dl.result.decision_reason = decision.mode, decision.reason
        return decision

    # ---- one attempt ----------------------------------------------------------------------------
    def _attempt(self, dl: Download, decision: ResumeDecision) -> None:
        store = self.store
        if decision.mode != "resume":
            store.discard_part(dl.part, dl.sidecar)
            dl.total = None
        offset = decision.offset if decision.mode == "resume" else 0
        if_range = decision.if_range if decision.mode == "resume" else None
        try:
            dl.open_part(offset)
            if offset and decision.needs_prefix_check and not self._prefix_matches(dl, decision):
                dl.result.decision, dl.result.decision_reason = "discard_part", "prefix_mismatch"
                offset, if_range = dl.restart(), None
            restarts = 0
            while True:
                try:
                    dl.result.resumed_from = offset
                    self._get(dl, offset, if_range)
                    break
                except _Restart as restart:
                    restarts += 1
                    dl.result.decision, dl.result.decision_reason = "discard_part", restart.reason
                    if restarts > MAX_RESTARTS:
                        detail = f"server keeps contradicting ranges ({restart.reason})"
                        raise DtkgError(Reason.BAD_RANGE, detail) from None
                    offset, if_range = dl.restart(), None
        except DtkgError as exc:
            if exc.transient and dl.pos > 0:
                dl.save_progress()
            elif exc.transient:
                # Nothing written yet (refused by the quota guard, or failed on the headers).
                dl.close_part()
                store.discard_part(dl.part, dl.sidecar)
            else:
                # Permanent (too large, 404 on resume, broken ranges): the part is worthless.
                dl.close_part()
                store.discard_part(dl.part, dl.sidecar)
            raise
        except BaseException:
            dl.save_progress()
            raise
        finally:
            dl.close_part()

    def _prefix_matches(self, dl: Download, decision: ResumeDecision) -> bool:
        """Resume without validators: the server's first bytes must hash like ours did."""
        want = dl.prefix_bytes
        if want <= 0 or dl.prefix_sha256 is None:
            return False
        state = PartState.read(dl.sidecar)
        if state is None or state.prefix_sha256 != dl.prefix_sha256 or state.prefix_bytes != want:
            return False  # the part on disk no longer matches its own sidecar
        with recorded_attempt(dl.result.http_attempts, "GET", dl.url) as record, \
                self.client.stream("GET", dl.url, headers=artifact_headers(0, upto=want - 1)) as response:
            record.status = response.status_code
            if response.status_code not in (200, 206):
                if response.status_code == 429 or response.status_code >= 500:
                    raise error_for_status(response)
                return False
            h = hashlib.sha256()
            got = 0
            for chunk in response.iter_raw():
                take = chunk[: want - got]
                h.update(take)
                got += len(take)
                if got >= want:
                    break
            record.bytes = got
            dl.result.body_bytes_received += got
        return got == want and h.hexdigest() == dl.prefix_sha256

    def _get(self, dl: Download, offset: int, if_range: str | None) -> None:
        result = dl.result
        received_before = result.body_bytes_received
        with recorded_attempt(result.http_attempts, "GET", dl.url) as record:
            try:
                with self.client.stream("GET", dl.url, headers=artifact_headers(offset, if_range)) as response:
                    record.status = result.http_status = response.status_code
                    result.final_url = str(response.url)
                    if self._read_response(dl, response, offset, if_range):
                        return
            finally:
                record.bytes = result.body_bytes_received - received_before
        if dl.total is not None and dl.pos != dl.total:
            if dl.pos < dl.total:
                raise DtkgError(Reason.TRUNCATED, f"body ended at {dl.pos} of {dl.total} bytes")
            raise _Restart("longer_than_announced")
        dl.finish_part()

    def _read_response(self, dl: Download, response: httpx.Response, offset: int, if_range: str | None) -> bool:
        """Judge the answer's status and headers (before any body byte), then stream its body into the
        part. True when the part was already complete (a 416 that confirms it)."""
        result = dl.result
        status = response.status_code
        self._check_status(dl, response, offset)
        if status == 416:
            self._complete_from_416(dl, response, offset)
            return True
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if status == 206:
            cr = parse_content_range(response.headers.get("content-range"))
            if cr is None:
                raise _Restart("bad_range")
            if cr.start != offset:
                raise _Restart("content_range_mismatch")
            if cr.total is not None and cr.end + 1 != cr.total:
                raise _Restart("bad_range")
            length = int_or_none(response.headers.get("content-length"))
            if length is not None and length != cr.end - cr.start + 1:
                raise _Restart("bad_range")
            if dl.total is not None and cr.total is not None and cr.total != dl.total:
                raise _Restart("size_changed")
            if encoding not in ("identity", ""):
                raise _Restart("encoded_range")
            total = cr.total
        else:  # 200: the whole object
            if offset > 0:
                sent = if_range
                new_tag = response.headers.get("etag")
                new_date = response.headers.get("last-modified")
                changed = sent is not None and sent != new_tag and sent != new_date
                result.decision = "discard_part"
                result.decision_reason = "validator_changed" if changed else "range_ignored"
                offset = dl.restart()
                result.resumed_from = 0
            identity = encoding in ("identity", "")
            total = int_or_none(response.headers.get("content-length")) if identity else None
        max_bytes = self.settings.quota.max_bytes
        if total is not None and total > max_bytes:
            raise DtkgError(Reason.TOO_LARGE, f"object of {total} bytes > max_bytes {max_bytes}")
        self._reserve(dl, None if total is None else max(0, total - offset))
        dl.total = total
        dl.validators = ServerValidators.from_response(response, total=total)
        result.etag, result.last_modified = dl.validators.etag, dl.validators.last_modified
        result.content_type = dl.validators.content_type
        # No sidecar yet: one naming zero durable bytes could not resume anything. The first
        # checkpoint (every 32 MiB, on an error, at the end) writes it with these validators.
        dl.preallocate()
        dl.hooks.stage("STREAMING", {"offset": offset, "total": total, "status": status})
        chunks = response.iter_raw() if encoding in ("identity", "") else response.iter_bytes()
        self._stream(dl, chunks)
        return False

    def _check_status(self, dl: Download, response: httpx.Response, offset: int) -> None:
        status = response.status_code
        if status in (200, 206) or (status == 416 and offset > 0):
            return
        refusal = response_refusal(response)  # bot challenge, forbidden, rate limited: told apart
        if refusal is not None:
            raise refusal
        if 200 <= status < 300:
            raise DtkgError(Reason.NOT_PDF, f"GET {response.url} answered HTTP {status} without a body", status=status)
        raise error_for_status(response)

    def _complete_from_416(self, dl: Download, response: httpx.Response, offset: int) -> None:
        """416 to `bytes=N-`: the part is complete only if the server's total is N and it verifies."""
        total = unsatisfied_range_total(response.headers.get("content-range"))
        if total != offset:
            raise _Restart("range_not_satisfiable")
        dl.total = total
        try:
            validate_pdf(dl.part, self.settings.validation)
        except DtkgError:
            raise _Restart("range_not_satisfiable_invalid_part") from None
        dl.finish_part()

    def _stream(self, dl: Download, chunks: Iterator[bytes]) -> None:
        """The hot loop: write + hash each chunk, look at the clock and the stop request; everything
        else only every MiB or every checkpoint interval."""
        fd = dl.fd
        pipe = HashPipe(dl.hasher) if dl.total is not None and dl.total - dl.pos >= HASH_THREAD_MIN else None
        update = pipe.update if pipe is not None else dl.hasher.update
        write = os.write
        clock = time.monotonic
        stopping = deadline.stop_requested
        pos = start = dl.pos
        limit = self.settings.quota.max_bytes
        interval = self.settings.io.checkpoint_interval_s
        next_checkpoint = pos + CHECKPOINT_EVERY
        # 0 turns time-based checkpoints off (inf never comes).
        next_tick = clock() + interval if interval > 0 else float("inf")
        next_mark = min(pos + PROGRESS_EVERY, limit + 1)
        progress = dl.hooks.progress
        try:
            for chunk in chunks:
                n = write(fd, chunk)
                if n != len(chunk):
                    write_rest(fd, chunk, n)
                update(chunk)
                pos += len(chunk)
                if stopping():
                    dl.pos = pos
                    raise deadline.interrupted_error()
                if pos >= next_mark or clock() >= next_tick:
                    dl.pos = pos
                    if pos > limit:
                        raise DtkgError(Reason.TOO_LARGE, f"body passed max_bytes {limit}")
                    now = clock()
                    if pos >= next_checkpoint or now >= next_tick:
                        dl.checkpoint_behind()
                        next_checkpoint = pos + CHECKPOINT_EVERY
                        if interval > 0:
                            next_tick = now + interval
                    if pos >= next_mark:
                        progress(pos)
                        crash_point("body_mib")  # crash tests: DTKG_CRASH_AT=body_mib:N dies after ~N MiB
                        next_mark = min(pos + PROGRESS_EVERY, limit + 1)
        finally:
            if pipe is not None:
                pipe.close()  # the hash covers every byte written, whatever ended the loop
            dl.pos = pos
            dl.result.body_bytes_received += pos - start
