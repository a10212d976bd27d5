"""The directory that several worker processes of one server share for their metrics.

prometheus-client's multiprocess mode: each process writes its values into memory-mapped files
of its own (``counter_<pid>.db``, ``gauge_livesum_<pid>.db``, ...) in one directory, and a
scrape, whichever worker answers it, adds up every file it finds there (``core.metrics``).
This module keeps that directory true to the processes that serve:

- ``claim`` (at a process's start-up, before it writes a value): under an exclusive lock on
  ``.lock``, each ``worker_<pid>.pid`` marker is checked. When no other marked process is
  alive, the server is starting afresh: every metrics file left by an earlier run is removed
  (counters restart at 0, which Prometheus reads as a counter reset). Otherwise the process
  joins live workers (Hypercorn replacing one): only the dead ones are marked dead. Then it
  writes its own marker.
- ``reap`` (at every scrape): the workers that died since are marked dead.
- ``release`` (at a graceful exit): the process marks itself dead.

Marking a process dead is prometheus-client's ``mark_process_dead``: its ``live*`` gauge files
go (live sessions, open sockets and process basics stop counting it), its counter and
histogram files stay, so the server's totals never go backwards while it runs.

"Alive" is the pid existing **and** starting at the time its marker recorded (``/proc``), so a
pid reused by another process (a container restarted on a volume always gets pid 1 again) is
not taken for the old worker. Only files of prometheus-client's own names are ever removed: a
directory shared by mistake with other files keeps them. One directory per server: two
servers on one directory would add up as one.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

#: The files prometheus-client writes (``<type>[_<gauge mode>]_<pid>.db``).
METRIC_FILE = re.compile(r"^(?:counter|histogram|summary|gauge_[a-z]+)_(\d+)\.db$")
LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")
MARKER = re.compile(r"^worker_(\d+)\.pid$")
LOCK = ".lock"


def start_time(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot, from ``/proc``), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        pass
    return not started or start_time(pid) in ("", started)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _workers(directory: Path) -> dict[int, bool]:
    """The processes still counted here (a marker, or live gauges): alive or not. A dead one
    already marked dead (counter files only) is not listed again."""
    workers: dict[int, bool] = {}
    entries = os.listdir(directory)
    for entry in entries:
        if marker := MARKER.match(entry):
            try:
                started = (directory / entry).read_text().strip()
            except OSError:
                continue
            workers[int(marker[1])] = _alive(int(marker[1]), started)
    for entry in entries:
        if live := LIVE_FILE.match(entry):
            workers.setdefault(int(live[1]), False)  # live gauges but no marker: gone
    return workers


def _mark_dead(directory: Path, pid: int) -> None:
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    (directory / f"worker_{pid}.pid").unlink(missing_ok=True)


def claim(directory: str | os.PathLike[str], pid: int | None = None) -> bool:
    """Join the directory as process ``pid`` (this one); True when it was wiped (no other
    worker alive: a fresh start)."""
    path = Path(directory)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = os.getpid() if pid is None else pid
    with _locked(path):
        workers = _workers(path)
        workers.pop(pid, None)
        fresh = not any(workers.values())
        if fresh:
            for entry in os.listdir(path):
                if METRIC_FILE.match(entry) or MARKER.match(entry):
                    (path / entry).unlink(missing_ok=True)
        else:
            for dead in (p for p, alive in workers.items() if not alive):
                _mark_dead(path, dead)
        (path / f"worker_{pid}.pid").write_text(start_time(pid) + "\n")
    return fresh


def reap(directory: str | os.PathLike[str]) -> list[int]:
    """Mark the workers that died dead; their pids."""
    path = Path(directory)
    with _locked(path):
        dead = [pid for pid, alive in _workers(path).items() if not alive]
        for pid in dead:
            _mark_dead(path, pid)
    return dead


def release(directory: str | os.PathLike[str], pid: int | None = None) -> None:
    """This process is leaving: its live gauges stop counting, its counters stay."""
    path = Path(directory)
    with _locked(path):
        _mark_dead(path, os.getpid() if pid is None else pid)
