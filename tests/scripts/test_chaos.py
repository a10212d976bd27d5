"""The chaos script: its audit catches what it must (pure), and one tiny real run (Redis killed
under 4 sessions) ends with its table row, ``CHAOS: OK`` and exit status 0."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from scripts.chaos_report import ACK, ERROR, Outcome, audit
from storage.context_store import Role, StoredMessage
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]


def msg(i: int, role: Role, content: str, partial: bool = False) -> StoredMessage:
    return StoredMessage(id=i, role=role, content=content, tokens=1, ts=20260101000000,
                         partial=partial)


def acked(session: int, index: int, answer: str) -> Outcome:
    return Outcome(session=session, index=index, text=f"q{index}", status=ACK, received=answer)


def test_audit_counts_lost_and_duplicated_answers() -> None:
    outcomes = [acked(0, 0, "a0"), acked(0, 1, "a1"), acked(0, 2, "a2"), acked(1, 0, "b0"),
                Outcome(session=1, index=1, text="q1", status=ERROR, code="upstream_error")]
    histories = {
        0: [msg(1, "user", "q0"), msg(2, "assistant", "a0"),
            msg(3, "user", "q1"), msg(4, "assistant", "a1"), msg(5, "assistant", "a1"),  # twice
            msg(6, "user", "q2"), msg(7, "assistant", "not what the client saw")],  # a2 lost
        # session 1: its acknowledged answer's question is missing; the errored one is partial
        1: [msg(1, "user", "q1"), msg(2, "assistant", "b", partial=True), msg(2, "user", "x")],
    }
    result = audit(outcomes, histories)
    assert (result.sent, result.acknowledged) == (5, 4)
    assert result.lost == 2  # session 0 message 2 (other text), session 1 message 0 (no question)
    assert result.duplicated == 2  # two answers to q1; message id 2 twice in session 1
    assert result.errors == Counter({"upstream_error": 1})
    assert not result.ok


def test_audit_of_a_clean_run_is_ok() -> None:
    outcomes = [acked(0, 0, "a0"), Outcome(session=0, index=1, text="q1", status=ERROR,
                                           code="session_stopped")]
    histories = {0: [msg(1, "user", "q0"), msg(2, "assistant", "a0"), msg(3, "user", "q1"),
                     msg(4, "assistant", "half", partial=True)]}
    result = audit(outcomes, histories)
    assert (result.lost, result.duplicated, result.wrong, result.ok) == (0, 0, 0, True)


ROW = re.compile(r"^redis-kill\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s")


def test_a_tiny_redis_kill_run(tmp_path: Path) -> None:
    require_tool("redis-server", "redis-server")
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.chaos", "--fault", "redis-kill", "--sessions", "4",
         "--users", "2", "--messages", "8", "--tokens", "8", "--think", "0.2", "--ramp-up",
         "0.4", "--fault-at", "0.5", "--down", "1", "--settle", "2", "--duration", "40",
         "--shared-mariadb", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=110)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert lines[-1].startswith("CHAOS: OK"), lines
    (row,) = [line for line in lines if line.startswith("redis-kill")]
    match = ROW.match(row)
    assert match, row
    sent, acknowledged, lost, duplicated, wrong = map(int, match.groups())
    assert sent == 32 and (lost, duplicated, wrong) == (0, 0, 0), row
    assert acknowledged >= 24, row  # Redis down for 1 s of ~3: most answers still complete
    assert "Redis down" in row
    numbers = json.loads(out.read_text())["faults"]["redis-kill"]
    assert numbers["sent"] == sent and numbers["acknowledged"] == acknowledged
    assert numbers["lost"] == 0 and numbers["duplicated"] == 0 and numbers["ok"] is True
    # The kill really hit the server while it chatted (its log says what Redis refused).
    log = (tmp_path / "work" / "redis-kill" / "server.log").read_text()
    assert re.search(r"(WARNING|ERROR) .*redis", log, re.IGNORECASE), log[-2000:]
