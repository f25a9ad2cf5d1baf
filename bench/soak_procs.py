"""The soak's processes and their memory, read from ``/proc``.

:class:`Processes` starts ``kizuna`` commands with their output in log files (kept when
something went wrong). Memory of a process tree:

- web (:func:`web_kb`): gunicorn's master plus its workers, each one's ``VmRSS`` summed — the
  same processes live for the whole run (a replaced worker is reported);
- an RQ worker (:func:`worker_kb`): the worker's ``VmRSS`` plus the *private* memory
  (``Private_Clean + Private_Dirty`` of ``smaps_rollup``) of its children: RQ forks a work-horse
  per job and its scheduler process once, and a fork shares its parent's pages, so adding a
  horse's whole RSS would count the parent twice — and make the sum jump whenever a sample
  happens to fall while a horse is alive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.harness import ROOT


def proc_table() -> dict[int, int]:
    """pid → parent pid of every process we can see."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid …": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            table[int(entry)] = int(fields[1])
    return table


def descendants(pid: int, table: Mapping[int, int]) -> list[int]:
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in table.items() if pp == parent]
        out.extend(kids)
        frontier.extend(kids)
    return out


def rss_kb(pid: int) -> int:
    """``VmRSS`` in kB (0 for a process that is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def private_kb(pid: int) -> int:
    """Pages only this process holds (0 for a process that is gone)."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        return 0
    return total


def web_kb(master: int, table: Mapping[int, int]) -> tuple[int, frozenset[int]]:
    """gunicorn master + workers (VmRSS summed), and the workers' pids."""
    kids = descendants(master, table)
    return rss_kb(master) + sum(rss_kb(p) for p in kids), frozenset(kids)


def worker_kb(pid: int, table: Mapping[int, int]) -> int:
    """An RQ worker's VmRSS plus its children's private memory."""
    return rss_kb(pid) + sum(private_kb(p) for p in descendants(pid, table))


def load_average() -> float:
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])


class Processes:
    """Named child processes with their output in ``logs/<name>.log``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> int:
        full = dict(os.environ)
        full.update(env)
        full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
        with open(self.logs / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(list(args), cwd=ROOT, env=full, stdout=out, stderr=out)
        self.procs[name] = proc
        return proc.pid

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def dead(self) -> list[str]:
        """Names of the processes that exited."""
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop_all(self, timeout: float = 20) -> None:
        """SIGTERM each (a warm shutdown, as a deploy does), in reverse start order; SIGKILL
        what has not exited after ``timeout``."""
        running = [p for p in reversed(self.procs.values()) if p.poll() is None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        for p in running:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def exceptions(self, name: str) -> Counter[str]:
        """The exceptions ``name``'s log shows with a traceback, by type and message (cut)."""
        found: Counter[str] = Counter()
        path = self.logs / f"{name}.log"
        if not path.exists():
            return found
        in_traceback = False
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("{") and '"exc": "Traceback' in line:  # production JSON logs
                    try:
                        exc = str(json.loads(line).get("exc", ""))
                    except ValueError:
                        exc = ""
                    found[(exc.strip().splitlines() or ["?"])[-1][:120]] += 1
                elif line.startswith("Traceback "):
                    in_traceback = True
                elif in_traceback and line.strip() and not line[0].isspace():
                    found[line.strip()[:120]] += 1
                    in_traceback = False
        return found
