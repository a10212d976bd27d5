"""The collector tuning of a server process (core.heap), in a fresh interpreter: frozen here, the
test process's objects alive at that moment would never be freed if they later died in a
cycle."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import gc, weakref
    from core.heap import FULL_COLLECTION_EVERY, tune_collector

    class Node:
        pass

    startup = Node(); startup.me = startup        # a cycle alive at start-up
    frozen = tune_collector()
    assert frozen > 1000, frozen                  # the imported modules came along
    assert gc.get_threshold()[2] == FULL_COLLECTION_EVERY > 10

    seen = weakref.ref(startup); del startup; gc.collect()
    assert seen() is not None                     # frozen: no collection walks it any more

    later = Node(); later.me = later              # made while serving
    gone = weakref.ref(later); del later; gc.collect()
    assert gone() is None                         # still collected
    print("ok")
""")


def test_tune_collector_freezes_startup_objects_and_keeps_collecting_new_ones() -> None:
    run = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, check=False,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
