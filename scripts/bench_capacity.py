"""Capacity: many idle attached sessions in one server process, RSS per session, and that a
message on any of them is still answered promptly.

    python -m scripts.bench_capacity [--sessions 10000] [--users 100] [--probes 20]

Starts the mock upstream (64 tokens, 10 ms per token) and one chat server process, opens
``--sessions`` WebSockets (each its own chat room, so its own session actor), reads each init
frame and keeps them all open and idle. RSS of the server's worker process is read from
/proc before and after (per session = growth / sessions). Then ``--probes`` random sessions send
one message each, one after the other, and the answer's time to first delta and total time are
reported (and checked whole).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import time

import trio

from scripts.bench_common import bench_stack, print_dist, proc_status
from scripts.loadtest import loadtest, raise_open_files_limit
from scripts.loadtest_client import (
    ChatSocket,
    LoadConfig,
    open_session,
    provision_users,
    read_answer,
    ws_url,
)
from scripts.loadtest_stats import Distribution, MessageResult, Recorder
from scripts.loadtest_verify import MessagePlan, compare


async def bench(args: argparse.Namespace) -> None:
    with bench_stack(tokens=64, delay_ms=10) as stack:
        t = time.monotonic()
        users = await provision_users(stack.url, args.users)
        print(f"{len(users)} users in {time.monotonic() - t:.1f} s", flush=True)
        await loadtest(LoadConfig(url=stack.url, sessions=20, messages=2, think=0.1),
                       MessagePlan(run_id="warm"), users, duration=60)
        await trio.sleep(1)
        rss0 = proc_status(stack.server_pid)
        run = secrets.token_hex(3)
        rec = Recorder()
        rec.started = trio.current_time()
        sockets: list[tuple[ChatSocket, str] | None] = [None] * args.sessions
        failures: list[str] = []
        release = trio.Event()
        limiter = trio.CapacityLimiter(args.parallel)

        async def hold(i: int) -> None:
            room = f"idle-{run}-{i}"
            url = ws_url(stack.url, users[i % len(users)].access_key, room)
            try:
                async with limiter:
                    cm = open_session(url, rec, connect_timeout=60)
                    ws = await cm.__aenter__()
                sockets[i] = (ws, room)
                try:
                    await release.wait()
                finally:
                    await cm.__aexit__(None, None, None)
            except Exception as exc:  # noqa: BLE001 - counted and shown
                failures.append(repr(exc)[:200])

        async with trio.open_nursery() as nursery:
            t = time.monotonic()
            for i in range(args.sessions):
                nursery.start_soon(hold, i)
            while sum(s is not None for s in sockets) + len(failures) < args.sessions:
                await trio.sleep(0.5)
            opened = time.monotonic() - t
            await trio.sleep(2)  # let the server settle
            rss1 = proc_status(stack.server_pid)
            held = sum(s is not None for s in sockets)
            print(f"{held:,} sessions open in {opened:.1f} s ({len(failures)} failed)",
                  flush=True)

            plan = MessagePlan(run_id=run)
            probes: list[MessageResult] = []
            for k, i in enumerate(random.Random(5).sample(range(args.sessions), args.probes)):
                entry = sockets[i]
                if entry is None:
                    continue
                ws, room = entry
                text = plan.text(i, 0)
                msg = MessageResult(session=i, index=0, sent_at=0.0)
                sent = trio.current_time()
                await ws.send_message(json.dumps({"msg": text, "chat_room_id": room}))
                with trio.fail_after(60):
                    received = await read_answer(ws, msg, rec, sent)
                msg.mismatch = compare(received, plan.expected(text))
                probes.append(msg)
            rss2 = proc_status(stack.server_pid)
            release.set()
        peak = proc_status(stack.server_pid, "VmHWM")

    per = (rss1 - rss0) / max(1, held)
    print(f"server RSS: {rss0 / 1024:.1f} MiB warm, {rss1 / 1024:.1f} MiB with {held:,} idle "
          f"sessions, {rss2 / 1024:.1f} MiB after the probes (peak {peak / 1024:.1f} MiB)")
    print(f"RSS per idle session: {per:.1f} KiB (target <= 64 KiB)")
    print_dist("connect (ms)", Distribution.of([v * 1000 for v in rec.connect_times]))
    print_dist("init frame (ms)", Distribution.of([v * 1000 for v in rec.init_times]))
    print(f"probes on random idle sessions ({len(probes)}):")
    print_dist("first delta (ms)", Distribution.of([m.ttft * 1000 for m in probes if m.ttft]))
    print_dist("total (ms)", Distribution.of([m.total * 1000 for m in probes if m.total]))
    bad = [m for m in probes if m.error or m.mismatch]
    print(f"probe failures: {len(bad)}; connect failures: {len(failures)} {failures[:3]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--probes", type=int, default=20)
    p.add_argument("--parallel", type=int, default=100, help="connections opening at once")
    args = p.parse_args()
    raise_open_files_limit(args.sessions * 2 + 1024)
    trio.run(bench, args)


if __name__ == "__main__":
    main()
