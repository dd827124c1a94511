"""A real nginx over a directory, for RFC-behaviour tests (If-Range, 416, gzip) and benchmarks.

Everything nginx writes (pid, logs, temp paths) stays in a private temp dir; nothing needs root.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from dtkg_assets_tests.support.net import free_port

NGINX_BIN = "/usr/sbin/nginx"
_INSTALL_HINT = "install nginx: `make system-deps` or `apt-get install nginx-light`"


def nginx_binary() -> str:
    """Path of the nginx binary, or a RuntimeError that names the fix."""
    if Path(NGINX_BIN).is_file():
        return NGINX_BIN
    found = shutil.which("nginx")
    if found:
        return found
    raise RuntimeError(f"nginx not found at {NGINX_BIN} or on PATH; {_INSTALL_HINT}")


class NginxServer:
    """nginx serving `root` on 127.0.0.1. ``gzip=True`` turns on gzip for application/pdf, so
    tests can show what nginx does to a client that accepts gzip."""

    def __init__(self, root: Path, port: int = 0, *, gzip: bool = False, host: str = "127.0.0.1") -> None:
        self.root = Path(root).resolve()
        self.host = host
        self.port = port
        self.gzip = gzip
        self.base_url = ""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def _config(self, tmp: Path) -> str:
        gzip = "gzip on;\n        gzip_types application/pdf;\n        gzip_min_length 1;" if self.gzip else "gzip off;"
        return f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{
        application/pdf pdf;
        text/html html;
        text/plain txt;
    }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 10000;
    etag on;
    server {{
        listen {self.host}:{self.port};
        server_name localhost;
        {gzip}
        location / {{
            root {self.root};
        }}
    }}
}}
"""

    @property
    def access_log(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("nginx is not running")
        return Path(self._tmp.name) / "access.log"

    def logged(self, needle: str, expected: int, timeout_s: float = 5.0) -> int:
        """How many access-log lines contain `needle`, once `expected` are there or `timeout_s` has
        passed: nginx writes a request's line after it has sent the response, so a client that
        has its answer can read the log before the line is in it."""
        deadline = time.monotonic() + timeout_s
        while (count := self.access_log.read_text().count(needle)) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return count

    def start(self, timeout_s: float = 20.0) -> NginxServer:
        if self._proc is not None:
            return self
        binary = nginx_binary()
        if not self.root.is_dir():
            raise RuntimeError(f"nginx root {self.root} is not a directory")
        if self.port == 0:
            self.port = free_port(self.host)
        self._tmp = tempfile.TemporaryDirectory(prefix="dtkg-nginx-")
        tmp = Path(self._tmp.name)
        conf = tmp / "nginx.conf"
        conf.write_text(self._config(tmp))
        self._proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                log = (tmp / "error.log").read_text(errors="replace") if (tmp / "error.log").exists() else ""
                self._cleanup()
                raise RuntimeError(f"nginx exited at start (code {self._proc.returncode}): {err}{log}".strip())
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx did not accept connections on {self.host}:{self.port}") from None
                time.sleep(0.05)
        self.base_url = f"http://{self.host}:{self.port}"
        return self

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name.lstrip('/')}"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
