"""One typed settings object for the whole product.

Defaults follow the original design notes (seeds/streaming-implementation-plan.md). Every field can
be overridden from the environment as ``DTKG_<GROUP>_<FIELD>`` (e.g. ``DTKG_IO_FSYNC=0``,
``DTKG_QUOTA_FREE_BYTES_MIN=0``); paths and secrets have their own names (``DTKG_HOME``,
``DTKG_MAILTO``, ``OPENALEX_API_KEY``, ``DTKG_OFFLINE``, ``DTKG_ALLOW_HOSTS``, ``DTKG_RATE_LIMITS``).

Scale-out (docs/scale-out.md): ``DTKG_LEDGER_URL=postgresql://…`` selects the PostgreSQL ledger (and
fleet-wide politeness state in the same database); ``DTKG_STORE_DIR`` puts the content-addressed store,
with per-worker staging, on a shared filesystem while ``DTKG_HOME`` stays per worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB


class SettingsError(ValueError):
    """A setting from the environment or config could not be parsed."""


@dataclass(frozen=True)
class IOSettings:
    chunk_bytes: int = 65536
    fsync: bool = True
    preallocate: bool = True
    preallocate_min_size_bytes: int = 2 * MiB
    # Make the part durable (fsync + sidecar) at least this often while streaming, so a crash or kill
    # loses at most this many seconds of a slow download (0: only every 32 MiB).
    checkpoint_interval_s: float = 1.0


@dataclass(frozen=True)
class ResumeSettings:
    prefix_check_bytes: int = 65536
    allow_without_validators: bool = False


@dataclass(frozen=True)
class QuotaSettings:
    free_bytes_min: int = 1 * GiB
    margin_factor: float = 1.5
    # Runaway bodies are aborted past this many bytes (reason too_large).
    max_bytes: int = 512 * MiB


@dataclass(frozen=True)
class StoreSettings:
    shard_width: int = 2
    dedupe_enabled: bool = True
    # Identical bytes for another work: hardlink (copy when links are impossible) or always copy.
    dedupe_hardlink: bool = True


@dataclass(frozen=True)
class ValidationSettings:
    min_bytes: int = 1024
    head_sniff_bytes: int = 1024
    # Real PDFs sometimes carry a few KB after %%EOF (signatures, padding from the host).
    tail_sniff_bytes: int = 8192
    # Files up to this size are rejected when their first head_sniff_bytes hold an HTML marker even
    # behind a %PDF- header (login pages served as PDFs are kilobytes; real PDFs rarely say <html).
    html_check_max_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class HttpSettings:
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    # Total deadline for one attempt (headers and body), seconds.
    attempt_deadline_s: float = 600.0
    max_redirects: int = 5
    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_cap_s: float = 60.0
    pool_connections: int = 64
    mailto: str = ""
    user_agent: str = "dtkg-assets/0.1 (+https://github.com/dtkg-assets/dtkg-assets)"
    # host -> requests per second; 0 means unlimited. "*" is the default for other hosts.
    rate_limits: Mapping[str, float] = field(
        default_factory=lambda: {
            "api.openalex.org": 10.0,
            "arxiv.org": 1 / 3,
            "export.arxiv.org": 1 / 3,
            "api.crossref.org": 10.0,
            "api.unpaywall.org": 5.0,
            "*": 5.0,
        }
    )
    breaker_fail_max: int = 5
    breaker_reset_s: float = 60.0
    robots_enabled: bool = True
    robots_ttl_s: float = 24 * 3600.0
    cache_enabled: bool = True
    # How long a cached metadata (OpenAlex JSON) response is served without asking again.
    cache_ttl_s: float = 24 * 3600.0
    offline: bool = False
    # Host names or CIDRs exempt from the private-address guard.
    allow_hosts: tuple[str, ...] = ()
    # PostgreSQL URL for fleet-wide rate limits, breakers and robots.txt (default: DTKG_LEDGER_URL when
    # that is PostgreSQL; neither: per process). DTKG_HTTP_SHARED_STATE_URL.
    shared_state_url: str = ""
    # Send a HEAD before every artifact GET (DTKG_HTTP_HEAD_PRECHECK=1). Off: one request per fresh
    # artifact; a HEAD is then sent only before resuming a part that has no strong validator.
    head_precheck: bool = False

    def user_agent_header(self) -> str:
        """``dtkg-assets/0.1 (+https://…; mailto:you@example.org)``: names the project and a contact."""
        base = self.user_agent.strip()
        if not self.mailto:
            return base
        if base.endswith(")"):
            return f"{base[:-1]}; mailto:{self.mailto})"
        return f"{base} (mailto:{self.mailto})"


@dataclass(frozen=True)
class LedgerSettings:
    lease_ttl_s: float = 120.0
    max_attempts: int = 5
    retry_backoff_s: float = 60.0
    retry_backoff_max_s: float = 6 * 3600.0
    part_orphan_ttl_s: float = 24 * 3600.0
    # How long a process waits for the single-writer lock before giving up with a clear message.
    writer_wait_s: float = 600.0
    # DTKG_LEDGER_URL: "" = the embedded DuckDB file under DTKG_HOME; postgresql://… = PostgreSQL.
    url: str = ""
    # A writer publishes the read snapshot at most this often while it runs (and always at close);
    # each publication copies the ledger file (0.4 s at a million works). 0: only at close.
    snapshot_interval_s: float = 30.0


@dataclass(frozen=True)
class OpenAlexSettings:
    base_url: str = "https://api.openalex.org"
    api_key: str = ""
    per_page: int = 100


@dataclass(frozen=True)
class LandingSettings:
    """Landing pages, the DOI and the OpenAlex content API as candidates after the direct PDF URLs."""

    # Resolve landing pages (OA locations' landing_page_url, open_access.oa_url) to their PDF link.
    enabled: bool = True
    # Try the DOI last, through this resolver (tests point it at a local origin).
    doi: bool = True
    doi_resolver: str = "https://doi.org/"
    # HTML pages are read up to this many bytes; at most this many HTML hops per candidate.
    max_html_bytes: int = 2 * MiB
    max_hops: int = 2
    # A host that served this many bot challenges is deferred for challenge_defer_s (0 = never).
    challenge_max: int = 2
    challenge_defer_s: float = 3600.0
    # OpenAlex content API (content.openalex.org/works/{id}.pdf, needs OPENALEX_API_KEY) as the last
    # candidate of works with has_content.pdf; it costs credits, so it is off unless asked for.
    content_api: bool = False
    content_base_url: str = "https://content.openalex.org"
    # At most this many content API downloads per UTC day (0 = none).
    content_daily_budget: int = 100


@dataclass(frozen=True)
class RunSettings:
    # Partitions per Dagster run (the backfill policy's batch) and download threads per run. Each run
    # costs about half a second of its own (run and step events, ledger open and snapshot, the tail
    # where a few last downloads keep the other threads idle): 2,000 PDFs at 200 ms took 62 s in runs
    # of 100 and 49 s in runs of 250. Since check runs write their evaluations in batches: 39.5 s in
    # runs of 250, 37.2 s in runs of 500, 38.2 s in runs of 1,000 (the last check run, after the
    # downloads, grows with the run: 0.9, 1.8, 3.6 s); on Dagster's PostgreSQL storage 36.9 s, 34.9 s
    # and 35.9 s. Two workers sharing 800 works (bench/scale_out.py) took 9.9 s in runs of 250 and
    # 9.2 s in runs of 500 (1.72x and 1.76x one worker), since fleet workers choose their batches one
    # at a time (before, two workers often took the same batch, and larger runs made that worse).
    batch_size: int = 500
    workers: int = 8
    # How a materialization request checks a work the ledger marks complete before reporting it
    # materialized: "exists", "size" or "sha256" (hash the file); a failed check redoes the work.
    verify_depth: str = "sha256"
    # Seconds between reconcile sensor ticks (read when the definitions load).
    reconcile_interval_s: int = 300
    # Opt-in: download newly registered partitions by Dagster's declarative automation.
    auto_download: bool = False
    # On SQLite Dagster storage, name the pooled event log (defs/event_storage.py) in the home's
    # dagster.yaml; off: Dagster's own storage on the same files.
    pooled_events: bool = True


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".dtkg")
    io: IOSettings = field(default_factory=IOSettings)
    resume: ResumeSettings = field(default_factory=ResumeSettings)
    quota: QuotaSettings = field(default_factory=QuotaSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    openalex: OpenAlexSettings = field(default_factory=OpenAlexSettings)
    run: RunSettings = field(default_factory=RunSettings)
    # DTKG_STORE_DIR: the content-addressed store on a filesystem shared by workers (None: under home).
    shared_store: Path | None = None
    landing: LandingSettings = field(default_factory=LandingSettings)

    @property
    def ledger_is_postgres(self) -> bool:
        return is_postgres_url(self.ledger.url)

    # Where things live under DTKG_HOME (the store may live elsewhere, see DTKG_STORE_DIR).
    @property
    def store_dir(self) -> Path:
        return self.shared_store if self.shared_store is not None else self.home / "store"

    @property
    def staging_dir(self) -> Path:
        """Partial downloads: on the store's filesystem (finalize is a rename). With a shared store,
        each worker stages in its own directory there, named by host and home."""
        if self.shared_store is None:
            return self.home / "staging"
        return self.shared_store / "staging" / worker_name(self.home)

    @property
    def ledger_path(self) -> Path:
        return self.home / "ledger.duckdb"

    @property
    def snapshot_path(self) -> Path:
        return self.home / "ledger.snapshot.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def http_cache_dir(self) -> Path:
        return self.home / "http-cache"

    def with_home(self, home: Path | str) -> Settings:
        return dataclasses.replace(self, home=Path(home))

    def replace(self, **groups: Mapping[str, Any]) -> Settings:
        """Copy with some fields changed: ``s.replace(io={"fsync": False})``."""
        changes: dict[str, Any] = {}
        for group, values in groups.items():
            current = getattr(self, group)
            changes[group] = dataclasses.replace(current, **dict(values))
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env: Mapping[str, str] = os.environ if environ is None else environ
        home_env = Path(env.get("DTKG_HOME", ".dtkg")).expanduser().absolute()
        saved = read_settings_file(home_env / SETTINGS_FILE)
        if saved:
            env = {**saved, **env}  # the environment wins over the file
        base = cls()
        groups: dict[str, Any] = {}
        for group_field in dataclasses.fields(cls):
            if group_field.name in ("home", "shared_store"):
                continue
            group = getattr(base, group_field.name)
            changes: dict[str, Any] = {}
            for f in dataclasses.fields(group):
                name = f"DTKG_{group_field.name}_{f.name}".upper()
                if name in env:
                    changes[f.name] = _parse(name, env[name], getattr(group, f.name))
            groups[group_field.name] = dataclasses.replace(group, **changes)
        http: HttpSettings = groups["http"]
        http_changes: dict[str, Any] = {}
        if "DTKG_MAILTO" in env:
            http_changes["mailto"] = env["DTKG_MAILTO"]
        if "DTKG_OFFLINE" in env:
            http_changes["offline"] = _parse("DTKG_OFFLINE", env["DTKG_OFFLINE"], False)
        if "DTKG_ALLOW_HOSTS" in env:
            http_changes["allow_hosts"] = _parse("DTKG_ALLOW_HOSTS", env["DTKG_ALLOW_HOSTS"], ())
        if "DTKG_RATE_LIMITS" in env:
            limits = dict(http.rate_limits)
            limits.update(parse_rate_limits(env["DTKG_RATE_LIMITS"]))
            http_changes["rate_limits"] = limits
        groups["http"] = dataclasses.replace(http, **http_changes)
        if "OPENALEX_API_KEY" in env:
            groups["openalex"] = dataclasses.replace(groups["openalex"], api_key=env["OPENALEX_API_KEY"])
        ledger: LedgerSettings = groups["ledger"]
        if ledger.url and not is_postgres_url(ledger.url):
            raise SettingsError(
                "DTKG_LEDGER_URL must be a postgresql://user@host:port/dbname URL (leave it unset for the "
                "embedded DuckDB ledger under DTKG_HOME)"
            )
        if groups["run"].verify_depth not in VERIFY_DEPTHS:
            raise SettingsError(
                f"DTKG_RUN_VERIFY_DEPTH={groups['run'].verify_depth!r}: expected one of {', '.join(VERIFY_DEPTHS)}"
            )
        store = env.get("DTKG_STORE_DIR", "").strip()
        shared_store = Path(store).expanduser().absolute() if store else None
        return cls(home=home_env, shared_store=shared_store, **groups)


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def worker_name(home: Path) -> str:
    """A stable name for one worker (host + DTKG_HOME), for its own staging directory in a shared store."""
    digest = hashlib.sha256(str(Path(home).absolute()).encode()).hexdigest()[:10]
    return f"{socket.gethostname()}-{digest}"


VERIFY_DEPTHS = ("exists", "size", "sha256")


# `KEY=VALUE` lines under DTKG_HOME that supply DTKG_* settings the environment does not set, so
# every process on a home (`dtkg`, `dagster dev`, the daemon's runs) sees what e.g. the demo needed.
SETTINGS_FILE = "settings.env"


def read_settings_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read it ({exc})") from exc
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not (key.startswith("DTKG_") or key in ("OPENALEX_API_KEY",)) or key == "DTKG_HOME":
            raise SettingsError(f"{path}:{number}: expected DTKG_NAME=VALUE, got {line!r}")
        values[key] = value.strip()
    return values


def write_settings_file(home: Path, values: Mapping[str, str]) -> Path:
    """Merge `values` into DTKG_HOME/settings.env (keeps other lines' settings)."""
    path = home / SETTINGS_FILE
    current = read_settings_file(path)
    current.update(values)
    home.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{k}={v}\n" for k, v in sorted(current.items()))
    path.write_text("# settings for every process on this home; the environment overrides them\n" + body)
    return path


def parse_rate_limits(text: str) -> dict[str, float]:
    """``"arxiv.org=0.333,127.0.0.1=0,*=5"`` -> {host: requests per second}; 0 = unlimited."""
    limits: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(f"DTKG_RATE_LIMITS item {item!r}: expected HOST=REQUESTS_PER_SECOND")
        try:
            rate = float(value) if "/" not in value else _fraction(value)
        except ValueError as exc:
            raise SettingsError(f"DTKG_RATE_LIMITS item {item!r}: {value!r} is not a number") from exc
        if rate < 0:
            raise SettingsError(f"DTKG_RATE_LIMITS item {item!r}: rate must be >= 0 (0 = unlimited)")
        limits[host.strip().lower()] = rate
    return limits


def _fraction(value: str) -> float:
    num, _, den = value.partition("/")
    return float(num) / float(den)


def _parse(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        if isinstance(default, Mapping):
            return parse_rate_limits(raw)
        return raw
    except ValueError as exc:
        raise SettingsError(f"environment variable {name}={raw!r} is not a valid {type(default).__name__}") from exc
