"""Concurrency: 1,000 chatting sessions at once, 5 messages each, every answer checked.

    python -m scripts.bench_concurrency [--sessions 1000] [--messages 5] [--think 1.0]
        [--ramp-up 10] [--plot docs/loadtest.png] [--json FILE]

Starts the mock upstream (64 tokens, 10 ms per token) and the chat server in their own processes
(``scripts.bench_common``), warms the server up, then runs ``scripts.loadtest`` against it and
prints its table plus the server's CPU and peak RSS. Target: 0 errors, 0 lost/duplicated text.
"""

from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path

import trio

from scripts.bench_common import bench_stack, cpu_seconds, proc_status
from scripts.loadtest import loadtest, write_json
from scripts.loadtest_client import LoadConfig, provision_users
from scripts.loadtest_plot import plot_timeline
from scripts.loadtest_stats import format_table
from scripts.loadtest_verify import MessagePlan


async def bench(args: argparse.Namespace) -> int:
    with bench_stack(tokens=64, delay_ms=10) as stack:
        users = await provision_users(stack.url, args.users)
        warm = LoadConfig(url=stack.url, sessions=20, messages=2, think=0.1)
        await loadtest(warm, MessagePlan(run_id="warm"), users, duration=60)
        cfg = LoadConfig(url=stack.url, sessions=args.sessions, messages=args.messages,
                         think=args.think, ramp_up=args.ramp_up, steady=args.steady,
                         answer_timeout=args.answer_timeout)
        cpu0, t0 = cpu_seconds(stack.server_pid), time.monotonic()
        result = await loadtest(cfg, MessagePlan(run_id=secrets.token_hex(3)), users,
                                duration=args.duration, progress=True)
        cpu = (cpu_seconds(stack.server_pid) - cpu0) / (time.monotonic() - t0)
        peak = proc_status(stack.server_pid, "VmHWM")
    print(format_table(result.summary))
    print(f"server: {cpu:.0%} of one core on average, peak RSS {peak / 1024:.0f} MiB")
    if args.json:
        write_json(args.json, result, {"server_cpu": cpu, "server_peak_rss_kib": peak})
    if args.plot:
        plot_timeline(result.timeline, args.plot,
                      title=f"{args.sessions} sessions x {args.messages} messages, think "
                      f"{args.think:g} s, ramp-up {args.ramp_up:g} s{' steady' if args.steady else ''} "
                      "(2 cores, shared)")
    return result.summary.failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--messages", type=int, default=5)
    p.add_argument("--think", type=float, default=1.0)
    p.add_argument("--ramp-up", type=float, default=10.0)
    p.add_argument("--steady", action="store_true", help="all sessions connect first, then "
                   "chat (see scripts/loadtest.py --steady): all of them open at once")
    p.add_argument("--answer-timeout", type=float, default=120.0)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--plot", type=Path)
    p.add_argument("--json", type=Path)
    raise SystemExit(1 if trio.run(bench, p.parse_args()) else 0)


if __name__ == "__main__":
    main()
