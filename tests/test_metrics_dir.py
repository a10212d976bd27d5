"""The multiprocess metrics directory (``core.metrics_dir``) with real processes: a fresh start
wipes an earlier run's files, a worker joining live ones only marks the dead ones dead, a pid
reused by another process is not taken for the old worker, and only prometheus-client's own
files are ever removed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import metrics_dir


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def worker_files(directory: Path, pid: int, started: str) -> None:
    for name in ("counter", "histogram", "gauge_livesum", "gauge_liveall"):
        (directory / f"{name}_{pid}.db").write_bytes(b"")
    (directory / f"worker_{pid}.pid").write_text(started + "\n")


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} - {".lock"}


def test_a_fresh_start_wipes_what_dead_workers_left(tmp_path: Path) -> None:
    old = dead_pid()
    worker_files(tmp_path, old, "1")
    (tmp_path / "counter_12.db").write_bytes(b"")  # no marker: an older run's
    (tmp_path / "notes.db").write_text("not ours")
    (tmp_path / "README").write_text("not ours")
    assert metrics_dir.claim(tmp_path, os.getpid()) is True
    assert names(tmp_path) == {"notes.db", "README", f"worker_{os.getpid()}.pid"}


def test_joining_live_workers_marks_only_the_dead_ones_dead(tmp_path: Path,
                                                           live_pid: int) -> None:
    old = dead_pid()
    worker_files(tmp_path, old, "1")
    worker_files(tmp_path, live_pid, metrics_dir.start_time(live_pid))
    assert metrics_dir.claim(tmp_path, os.getpid()) is False
    left = names(tmp_path)
    assert {f"counter_{old}.db", f"histogram_{old}.db"} <= left  # its counts still add up
    assert not {f"gauge_livesum_{old}.db", f"gauge_liveall_{old}.db", f"worker_{old}.pid"} & left
    assert {f"gauge_livesum_{live_pid}.db", f"worker_{live_pid}.pid",
            f"worker_{os.getpid()}.pid"} <= left


def test_a_reused_pid_is_not_the_old_worker(tmp_path: Path, live_pid: int) -> None:
    started = metrics_dir.start_time(live_pid)
    assert started
    worker_files(tmp_path, live_pid, str(int(started) - 100))  # that pid, started earlier
    assert metrics_dir.claim(tmp_path, os.getpid()) is True
    assert names(tmp_path) == {f"worker_{os.getpid()}.pid"}


def test_reap_marks_workers_that_died_since(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker_files(tmp_path, proc.pid, metrics_dir.start_time(proc.pid))
    assert metrics_dir.reap(tmp_path) == []
    proc.kill()
    proc.wait()
    assert metrics_dir.reap(tmp_path) == [proc.pid]
    assert names(tmp_path) == {f"counter_{proc.pid}.db", f"histogram_{proc.pid}.db"}
    assert metrics_dir.reap(tmp_path) == []  # already marked: not listed again


def test_release_takes_a_worker_out_of_the_live_gauges(tmp_path: Path) -> None:
    assert metrics_dir.claim(tmp_path, os.getpid())
    worker_files(tmp_path, os.getpid(), metrics_dir.start_time(os.getpid()))
    metrics_dir.release(tmp_path, os.getpid())
    assert names(tmp_path) == {f"counter_{os.getpid()}.db", f"histogram_{os.getpid()}.db"}
