"""The load test's own logic (percentiles, verification, aggregation) and one short real run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from core.settings import Settings
from scripts.loadtest import LoadResult, loadtest, write_json
from scripts.loadtest_client import (
    LoadConfig,
    first_message_delay,
    load_users,
    provision_users,
    save_users,
    ws_url,
)
from scripts.loadtest_stats import (
    Distribution,
    MessageResult,
    Recorder,
    format_table,
    percentile,
    summarize,
    timeline,
)
from scripts.loadtest_verify import CORRUPTED, DUPLICATED, LOST, MessagePlan, compare, describe
from scripts.mock_upstream import expected_chunks
from tests.chat_server import running_server

# --- percentiles -------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.floats(0, 100))
def test_percentile_is_within_range_and_monotonic(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert min(values) <= p <= max(values)
    assert percentile(values, min(100.0, q + 1)) >= p


def test_distribution_of_nothing_is_nan() -> None:
    d = Distribution.of([])
    assert d.count == 0 and math.isnan(d.p99)
    d = Distribution.of([3.0, 1.0, 2.0])
    assert (d.count, d.mean, d.p50, d.max) == (3, 2.0, 2.0, 3.0)


# --- verification ------------------------------------------------------------------------------

PLAN = MessagePlan(run_id="r1", tokens=16)


def test_plan_text_carries_marker_and_is_unique() -> None:
    a, b = PLAN.text(0, 0), PLAN.text(0, 1)
    assert a != b and "[mock tokens=16]" in a
    assert "[mock" not in MessagePlan(run_id="r").text(1, 1)
    assert "[mock tokens=4 delay_ms=2.5]" in MessagePlan("r", tokens=4, delay_ms=2.5).text(0, 0)


def test_expected_answer_is_the_mock_stream_joined() -> None:
    text = PLAN.text(3, 2)
    chunks = expected_chunks([{"role": "user", "content": text}], 64)
    assert len(chunks) == 16  # the marker wins over the default
    assert PLAN.expected(text) == "".join(chunks)


def test_compare_finds_lost_duplicated_and_corrupted_text() -> None:
    chunks = list(expected_chunks([{"role": "user", "content": PLAN.text(0, 0)}], 64))
    whole = "".join(chunks)
    assert compare(whole, whole) is None
    assert compare("".join(chunks[:-1]), whole) == LOST
    assert compare("".join(chunks[:5] + chunks[6:]), whole) == LOST
    assert compare("".join(chunks[:5] + chunks[4:]), whole) == DUPLICATED
    swapped = "".join(chunks[1:2] + chunks[0:1] + chunks[2:])
    assert len(swapped) == len(whole) and compare(swapped, whole) == CORRUPTED
    assert "first difference at 0" in describe(swapped, whole)


# --- aggregation -------------------------------------------------------------------------------


def _recorder() -> Recorder:
    rec = Recorder(connect_times=[0.010, 0.020], init_times=[0.001, 0.002])
    ok = MessageResult(session=0, index=0, sent_at=0.5, ttft=0.1, total=0.7, gaps=[0.01, 0.03],
                       frames=4, deltas=3, bytes=300)
    bad = MessageResult(session=1, index=0, sent_at=1.5, ttft=0.2, total=0.4, frames=3,
                        deltas=2, bytes=200, mismatch=LOST)
    err = MessageResult(session=1, index=1, sent_at=2.5, total=0.05, frames=1, bytes=90,
                        error="upstream_error")
    cut = MessageResult(session=0, index=1, sent_at=3.5, ttft=0.3, deltas=1, frames=1,
                        bytes=50, error="cancelled")
    rec.messages = [ok, bad, err, cut]
    rec.delta_times = [0.6, 0.61, 0.64, 1.7, 1.75, 3.8]
    rec.unexpected_closes = 1
    rec.session_errors["rejected_403"] = 2
    return rec


def test_summary_counts_errors_mismatches_and_throughput() -> None:
    s = summarize(_recorder(), sessions=4, messages_planned=8, duration=4.0)
    assert (s.messages_sent, s.answers_complete) == (4, 2)
    assert s.errors == {"rejected_403": 2, "upstream_error": 1}  # "cancelled" is not an error
    assert s.mismatches == {"lost": 1}
    assert s.unexpected_closes == 1 and s.failures == 5
    assert s.ttft_ms.count == 3 and s.ttft_ms.p50 == pytest.approx(200.0)
    assert s.gap_ms.count == 2 and s.gap_ms.max == pytest.approx(30.0)
    assert s.total_ms.count == 2 and s.total_ms.max == pytest.approx(700.0)
    assert s.messages_per_s == pytest.approx(0.5)
    assert s.deltas_per_s == pytest.approx(6 / 4)
    assert s.connect_ms.p50 == pytest.approx(15.0)
    data = s.to_json()
    json.dumps(data, allow_nan=False)  # NaN becomes null
    assert data["failures"] == 5
    assert s.unanswered == 8 - 2 - 1  # one message ended with an error; one was cut
    table = format_table(s)
    assert "first delta (ms)" in table and "upstream_error: 1" in table
    assert "5 FAILURES" in table


def test_timeline_buckets_throughput_and_latency() -> None:
    rows = timeline(_recorder(), 4.0, buckets=4)
    assert [r.start for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert [r.deltas_per_s for r in rows] == [3.0, 2.0, 0.0, 1.0]
    assert [r.messages_per_s for r in rows] == [0.0, 2.0, 0.0, 0.0]  # ends at 1.2 and 1.9
    assert rows[0].ttft_p50_ms == pytest.approx(100.0)
    assert math.isnan(rows[2].ttft_p50_ms)
    assert timeline(Recorder(), 0.0) == []


def test_users_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    from scripts.loadtest_client import Credentials

    save_users(path, [Credentials("k1", "a@example.com"), Credentials("k2")])
    assert [u.access_key for u in load_users(path)] == ["k1", "k2"]
    path.write_text('["k3"]')
    assert load_users(path)[0].access_key == "k3"
    assert ws_url("https://h:1/", "a/b", "r1") == "wss://h:1/ws/chatgpt/a%2Fb?chat_room_id=r1"


# --- one short run against a real server -------------------------------------------------------


async def test_short_run_against_a_real_server(db_settings: Settings, redis_actor: object,
                                               tmp_path: Path) -> None:
    async with running_server(db_settings, mock={"tokens": 8, "delay_ms": 2}) as server:
        users = await provision_users(server.url, 2)
        cfg = LoadConfig(url=server.url, sessions=5, messages=2, ramp_up=0.2, think=0.05,
                         answer_timeout=20)
        plan = MessagePlan(run_id="t", tokens=6, default_tokens=8)
        result: LoadResult = await loadtest(cfg, plan, users, duration=60)
    s = result.summary
    assert s.failures == 0, format_table(s)
    assert (s.messages_sent, s.answers_complete) == (10, 10)
    assert s.errors == {} and s.mismatches == {} and s.unexpected_closes == 0
    assert s.unanswered == 0
    assert s.ttft_ms.count == 10 and s.connect_ms.count == 5
    assert s.deltas_per_s > 0 and result.timeline
    write_json(tmp_path / "out.json", result)
    assert json.loads((tmp_path / "out.json").read_text())["summary"]["failures"] == 0


async def test_steady_run_opens_every_session_before_chatting(
    db_settings: Settings, redis_actor: object
) -> None:
    async with running_server(db_settings, mock={"tokens": 4, "delay_ms": 1}) as server:
        users = await provision_users(server.url, 2)
        cfg = LoadConfig(url=server.url, sessions=6, messages=1, ramp_up=0.3, think=0.2,
                         steady=True, answer_timeout=20)
        result = await loadtest(cfg, MessagePlan(run_id="s", default_tokens=4), users,
                                duration=60)
    s = result.summary
    assert s.failures == 0 and s.answers_complete == 6, format_table(s)
    assert s.peak_open == 6  # nobody finished before everybody had connected
    sent = sorted(m.sent_at for m in result.recorder.messages)
    assert sent[0] >= 0.3 and sent[-1] <= 0.3 + 0.2 + 1.0
    assert all(0 <= first_message_delay(i, cfg) <= cfg.think for i in range(6))


# --- the script itself, run for real: its verdict and exit status -----------------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("mock_tokens", "mismatch"),
    [
        (8, None),  # what the mock sends: every answer verified
        (9, LOST),  # the verification expects a word more than the mock sends
        (7, DUPLICATED),  # ... or a word less
    ],
)
async def test_the_script_reports_its_verdict_in_its_result_line_and_exit_status(
    db_settings: Settings, redis_actor: object, tmp_path: Path, mock_tokens: int,
    mismatch: str | None,
) -> None:
    async with running_server(db_settings, mock={"tokens": 8, "delay_ms": 1}) as server:
        argv = [sys.executable, "-m", "scripts.loadtest", "--url", server.url, "--users", "1",
                "--sessions", "2", "--messages", "2", "--think", "0.01", "--quiet",
                "--mock-tokens", str(mock_tokens), "--answer-timeout", "20",
                "--duration", "60", "--json", str(tmp_path / "out.json")]
        with trio.fail_after(90):
            done = await trio.run_process(argv, cwd=ROOT, capture_stdout=True,
                                          capture_stderr=True, check=False)
    out = done.stdout.decode()
    report = f"exit {done.returncode}\n{out}\n{done.stderr.decode()[-2000:]}"
    result_lines = [line for line in out.splitlines() if line.startswith("RESULT:")]
    summary = json.loads((tmp_path / "out.json").read_text())["summary"]
    assert summary["answers_complete"] == 4 and summary["errors"] == {}, report
    if mismatch is None:
        assert done.returncode == 0, report
        assert result_lines == ["RESULT: OK"], report
        assert "answers differing from the upstream's: none" in out, report
        assert summary["mismatches"] == {} and summary["failures"] == 0
    else:
        assert done.returncode == 1, report
        assert result_lines == ["RESULT: 4 FAILURES"], report
        assert f"answers differing from the upstream's: {mismatch}: 4" in out, report
        assert summary["mismatches"] == {mismatch: 4} and summary["failures"] == 4
