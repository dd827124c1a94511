"""What a user can do about each failure reason: the human detail shown beside a reason code
(on a failed partition's page in Dagster, in `dtkg` summaries)."""

from __future__ import annotations

from dtkg_assets.core.errors import Reason, is_transient

RETRY_HINT = "Materialize the partition again (or `dtkg works retry --reason {reason}`) once that is fixed."

_ADVICE: dict[str, str] = {
    Reason.HTTP_404.value: "The server has no file at this URL. Check the work's URLs in OpenAlex; "
    "if the file came back, materialize the partition again.",
    Reason.HTTP_410.value: "The server says the file is gone for good. Look for another copy of the work.",
    Reason.HTTP_4XX.value: "The server refused the request (see the status in the detail). Check access rights.",
    Reason.NOT_PDF.value: "The URL answered something that is not a PDF. The work may need a landing-page link.",
    Reason.HTML_PAGE.value: "The URL answered an HTML page (a landing page or a bot challenge), not the PDF.",
    Reason.TOO_SMALL.value: "The body was too small to be a real PDF (DTKG_VALIDATION_MIN_BYTES).",
    Reason.TOO_LARGE.value: "The body passed the size cap; raise DTKG_QUOTA_MAX_BYTES if it is legitimate.",
    Reason.ROBOTS_DISALLOWED.value: "The host's robots.txt disallows this path; it is not fetched.",
    Reason.PRIVATE_ADDRESS.value: "The URL points at a private or loopback address. If the host is yours, add it "
    "to DTKG_ALLOW_HOSTS (environment or DTKG_HOME/settings.env) and materialize again.",
    Reason.UNSUPPORTED_SCHEME.value: "Only http(s) URLs are fetched; the work needs another URL.",
    Reason.TOO_MANY_REDIRECTS.value: "The URL redirects in a loop or too often; check it in a browser.",
    Reason.OFFLINE.value: "DTKG_OFFLINE is on: no network calls are made. Turn it off and materialize again.",
    Reason.NO_CANDIDATES.value: "The work has no usable URL in its OpenAlex record.",
    Reason.BAD_INPUT.value: "The work's input record was malformed; fix the source and import it again.",
    Reason.HASH_MISMATCH.value: "The stored bytes did not hash to the ledger's sha256; it is downloaded again.",
    Reason.RETRIES_EXHAUSTED.value: "Transient failures kept happening past the attempt limit. Check the host, "
    "then materialize again.",
    Reason.BREAKER_OPEN.value: "Too many failures at this host in a row; automation retries after the backoff.",
    Reason.QUOTA_EXCEEDED.value: "Not enough free disk for this file; free space, automation retries later.",
    Reason.DISK_FULL.value: "The disk filled up; free space, automation retries later.",
    "leased_elsewhere": "Another run holds this work right now; it reports the outcome.",
    "internal_error": "A bug or an unexpected system error; see the run's logs and report it.",
}


def advice(reason: str) -> str:
    """One or two sentences on what to do about `reason`."""
    text = _ADVICE.get(reason)
    if text is not None:
        return text
    try:
        transient = is_transient(reason)
    except ValueError:
        transient = False
    if transient:
        return "A temporary network or server problem; automation retries after the backoff."
    return RETRY_HINT.format(reason=reason)
