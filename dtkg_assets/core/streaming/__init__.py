"""Streaming downloads, one module per concern:

- `engine`: `Engine.fetch`, one candidate URL -> a verified PDF in the store (the pipeline and its
  durability invariants are described there);
- `validators`: what the server says about the object (`ServerValidators`) and the optional HEAD;
- `sidecar`: the `.part` sidecar (`PartState`), what partial bytes are and how many are durable;
- `part`: one download's state and its `.part` file: seeding the hash, preallocation, checkpoints;
- `resume`: whether to resume or discard a part, and why (`decide_resume`);
- `ranges`: the request headers of an artifact GET and the parsing of Content-Range;
- `hashing`: SHA-256 on a helper thread beside the stream.

How an exchange fails (status or transport error -> reason) is `core.http_errors`; whether a URL is
fetchable at all is `core.urls`.
"""

from dtkg_assets.core.streaming.engine import Engine
from dtkg_assets.core.streaming.ranges import ARTIFACT_ACCEPT, parse_content_range
from dtkg_assets.core.streaming.resume import ResumeDecision, decide_resume
from dtkg_assets.core.streaming.sidecar import PartState
from dtkg_assets.core.streaming.validators import ServerValidators, head_precheck

__all__ = [
    "ARTIFACT_ACCEPT",
    "Engine",
    "PartState",
    "ResumeDecision",
    "ServerValidators",
    "decide_resume",
    "head_precheck",
    "parse_content_range",
]
