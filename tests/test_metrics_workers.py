"""``GET /metrics`` with two real worker processes (``make run``'s ``python -m scripts.serve``
with ``WORKERS=2``, through ``scripts.bench_common``) sharing one ``METRICS_MULTIPROC_DIR``:
whichever worker answers a scrape, it reports the sum over both."""

from __future__ import annotations

from pathlib import Path

import trio
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from trio_websocket import open_websocket_url

from scripts.bench_common import Stack, bench_stack
from scripts.loadtest_client import provision_users, ws_url
from tests.chat_server import ChatClient
from tests.metrics_scrape import TOKEN, Samples, label_values, scrape, scrape_until, value

STALE_PID = 999_999_999  # beyond any pid_max: never alive


def per_worker(directory: Path, name: str) -> dict[int, float]:
    """Each worker's own value of an unlabelled counter, read from its own file."""
    values: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == name:
                    values[pid] = sample.value
    return values


def plant_stale_counter(directory: Path) -> None:
    """What an earlier run of the server left: a start-up must not add it to this run's."""
    directory.mkdir()
    stale = MmapedDict(str(directory / f"counter_{STALE_PID}.db"))
    key = mmap_key("chat_answers_started", "chat_answers_started_total", (), (),
                   "Answers whose generation started.")
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    (directory / f"worker_{STALE_PID}.pid").write_text("1\n")


async def chat_once(stack: Stack, access_key: str, room: str) -> None:
    async with open_websocket_url(ws_url(stack.url, access_key, room)) as ws:
        client = ChatClient(ws)
        await client.init()
        await client.send(f"hello from {room}")
        _, last = await client.answer()
        assert "error" not in last, last


async def drive(stack: Stack, directory: Path) -> None:
    users = await provision_users(stack.url, 4, prefix="metrics")
    workers = set(stack.server_pids)
    assert len(workers) == 2
    done = 0
    for round_ in range(12):  # until both workers have answered (the kernel picks who accepts)
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(chat_once, stack, users[i % 4].access_key, f"r{round_}-{i}")
        done += 6
        shares = per_worker(directory, "chat_answers_started_total")
        if all(shares.get(pid, 0) > 0 for pid in workers):
            break
    shares = per_worker(directory, "chat_answers_started_total")
    assert set(shares) == workers and all(v > 0 for v in shares.values()), shares
    assert sum(shares.values()) == done

    for _ in range(6):  # fresh connections: both workers answer some of these
        samples = await scrape(stack.url)
        assert value(samples, "chat_answers_started_total") == done  # not 1000 more: wiped
        assert value(samples, "chat_answers_finished_total", reason="complete") == done
        assert value(samples, "chat_answer_duration_seconds_count") == done
        assert value(samples, "chat_answer_first_delta_seconds_count") == done
        assert value(samples, "chat_forwarded_messages_total") == 0
        assert label_values(samples, "process_start_time_seconds", "pid") == {
            str(pid) for pid in workers}  # each live worker's process basics, by pid

    # Live gauges: sockets held open now, wherever they landed, summed over the workers.
    async with trio.open_nursery() as nursery:
        opened = 0
        release = trio.Event()

        async def hold(i: int) -> None:
            nonlocal opened
            url = ws_url(stack.url, users[i % 4].access_key, f"held-{i}")
            async with open_websocket_url(url) as ws:
                await ChatClient(ws).init()
                opened += 1
                await release.wait()

        for i in range(8):
            nursery.start_soon(hold, i)
        with trio.fail_after(10):
            while opened < 8:
                await trio.sleep(0.05)

        def eight_open(s: Samples) -> bool:
            # Both gauges are sampled by each worker once a second: wait for both samples.
            return (value(s, "chat_sockets_open") == 8
                    and value(s, "chat_sessions_live") == done + 8)

        samples = await scrape_until(stack.url, eight_open)
        assert value(samples, "chat_sockets_open") == 8
        assert value(samples, "chat_sessions_live") == done + 8
        release.set()


def test_two_workers_report_the_sum_of_both(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    plant_stale_counter(directory)
    env = {"METRICS_MULTIPROC_DIR": str(directory), "METRICS_TOKEN": TOKEN}
    with bench_stack(tokens=8, delay_ms=2, server_workers=2, env=env) as stack:
        assert not (directory / f"counter_{STALE_PID}.db").exists()  # wiped at start-up
        trio.run(drive, stack, directory)
        workers = stack.server_pids
    # Each worker drained and marked itself dead, and the parent took its own marker away; a
    # worker that ended before it could would be marked by the next scrape or start-up.
    from core import metrics_dir

    assert set(metrics_dir.reap(directory)) <= set(workers)
    left = {p.name for p in directory.iterdir()}
    assert not {n for n in left if n.startswith(("gauge_live", "worker_"))}, left
    assert {f"counter_{pid}.db" for pid in workers} <= left

