"""Saturation: delivered deltas/s and latency as the number of chatting sessions rises.

    python -m scripts.bench_saturation [--steps 25,50,100,200,400,800] [--seconds 15]

One mock upstream (64 tokens, 10 ms per token) and one chat server process; for each step,
that many sessions chat back to back (no think time) for ``--seconds`` and the load test
reports what was delivered. Once the server's core is full, upstream tokens keep arriving at
the same rate but each socket's outbox coalesces pending deltas into one frame: frames per
answer fall, while time to first delta and the gaps between frames stay bounded (no queue
grows). Answers are checked whole at every step.
"""

from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path

import trio

from scripts.bench_common import bench_stack, cpu_seconds, proc_status, py_spy, top_frames
from scripts.loadtest import loadtest
from scripts.loadtest_client import LoadConfig, provision_users
from scripts.loadtest_verify import MessagePlan

TOKENS = 64


async def bench(args: argparse.Namespace) -> None:
    steps = [int(s) for s in args.steps.split(",")]
    rows = []
    with bench_stack(tokens=TOKENS, delay_ms=10) as stack:
        users = await provision_users(stack.url, args.users)
        await loadtest(LoadConfig(url=stack.url, sessions=20, messages=2, think=0.1),
                       MessagePlan(run_id="warm"), users, duration=60)
        for n in steps:
            cfg = LoadConfig(url=stack.url, sessions=n, messages=10_000, think=0.0,
                             ramp_up=min(5.0, n / 100), answer_timeout=120)
            cpu0, t0 = cpu_seconds(stack.server_pid), time.monotonic()
            spy = args.py_spy if n == steps[-1] else None
            with py_spy(stack.server_pid, spy):
                result = await loadtest(cfg, MessagePlan(run_id=secrets.token_hex(3)), users,
                                        duration=args.seconds)
            cpu = (cpu_seconds(stack.server_pid) - cpu0) / (time.monotonic() - t0)
            s = result.summary
            rows.append((n, s, cpu, proc_status(stack.server_pid)))
            print(f"{n} sessions: {s.answers_complete} answers, {s.deltas_per_s:,.0f} frames/s,"
                  f" failures {s.failures}", flush=True)
    print()
    print("| sessions | answers/s | tokens/s delivered | frames/s | frames/answer p50 | "
          "first delta p50 / p99 (ms) | frame gap p50 / p99 (ms) | answer p50 / p99 (ms) | "
          "server CPU | failures |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, s, cpu, _rss in rows:
        print(f"| {n} | {s.messages_per_s:.1f} | {s.messages_per_s * TOKENS:,.0f} | "
              f"{s.deltas_per_s:,.0f} | {s.frames_per_answer.p50:.0f} | "
              f"{s.ttft_ms.p50:.0f} / {s.ttft_ms.p99:.0f} | {s.gap_ms.p50:.0f} / "
              f"{s.gap_ms.p99:.0f} | {s.total_ms.p50:.0f} / {s.total_ms.p99:.0f} | {cpu:.0%} | "
              f"{s.failures} |")
    if args.py_spy and args.py_spy.exists():
        print(f"\nserver profile at {steps[-1]} sessions (py-spy, self % / total %):")
        for name, own, total in top_frames(args.py_spy):
            print(f"  {own:5.1f} {total:5.1f}  {name[:150]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default="25,50,100,200,400,800")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--users", type=int, default=40)
    p.add_argument("--py-spy", type=Path, help="profile the server during the last step into "
                   "this collapsed-stack file and print its busiest functions")
    trio.run(bench, p.parse_args())


if __name__ == "__main__":
    main()
