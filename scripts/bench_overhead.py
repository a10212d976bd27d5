"""Overhead of the chat server over its upstream: the same requests, direct and through it.

    python -m scripts.bench_overhead [--sessions 200] [--messages 5] [--think 5] [--ramp-up 5]

One run: starts the mock upstream (64 tokens, 10 ms per token) and the chat server in their own
processes, then (1) ``--sessions`` concurrent clients stream the chat completions straight from
the mock with httpx + httpx-sse (one client each: one shared httpx pool collapses at this
concurrency, see NOTES-trio-stack.md), and (2) the same number of WebSocket sessions send the
same messages through the server. Time to first delta and total time per answer are compared;
"added" is the difference of the percentiles. Both phases check every answer against the mock's.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from pathlib import Path

import httpx
import trio
from httpx_sse import aconnect_sse

from scripts.bench_common import bench_stack, cpu_seconds, print_dist, py_spy, top_frames
from scripts.loadtest import loadtest
from scripts.loadtest_client import (
    LoadConfig,
    collector_paused,
    first_message_delay,
    provision_users,
)
from scripts.loadtest_stats import Distribution, MessageResult, Recorder, summarize
from scripts.loadtest_verify import MessagePlan, compare


async def direct_session(mock_url: str, i: int, cfg: LoadConfig, plan: MessagePlan,
                         rec: Recorder) -> None:
    messages, think = cfg.messages, cfg.think
    # One SSL context for all: building one per client costs ~0.1 s of the generator's CPU.
    async with httpx.AsyncClient(base_url=mock_url, timeout=60, verify=_SSL) as http:
        if cfg.steady:
            await trio.sleep_until(rec.started + cfg.ramp_up + first_message_delay(i, cfg))
        for k in range(messages):
            if k and think:
                await trio.sleep(think)
            text = plan.text(i, k)
            msg = MessageResult(session=i, index=k, sent_at=trio.current_time() - rec.started)
            rec.messages.append(msg)
            parts: list[str] = []
            sent = last = trio.current_time()
            body = {"model": "gpt-4o-mini", "stream": True,
                    "messages": [{"role": "user", "content": text}]}
            async with aconnect_sse(http, "POST", "/v1/chat/completions", json=body) as source:
                async for event in source.aiter_sse():
                    now = trio.current_time()
                    if event.data == "[DONE]":
                        msg.total = now - sent
                        break
                    msg.frames += 1
                    msg.bytes += len(event.data)
                    delta = json.loads(event.data)["choices"][0]["delta"].get("content")
                    if not delta:
                        continue
                    msg.delta_at(now, sent, last)
                    last = now
                    parts.append(delta)
            msg.mismatch = compare("".join(parts), plan.expected(text))


_SSL = httpx.create_ssl_context()


def _server_cpu(pids: tuple[int, ...]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def direct_phase(mock_url: str, cfg: LoadConfig, plan: MessagePlan
                       ) -> tuple[Recorder, float]:
    rec = Recorder()
    with collector_paused():  # as run_load does for the server phase
        rec.started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(cfg.sessions):
                await trio.sleep_until(rec.started + cfg.ramp_up * i / cfg.sessions)
                nursery.start_soon(direct_session, mock_url, i, cfg, plan, rec)
        return rec, trio.current_time() - rec.started


async def bench(args: argparse.Namespace) -> None:
    with bench_stack(tokens=64, delay_ms=10, server_workers=args.server_workers) as stack:
        users = await provision_users(stack.url, max(1, args.sessions // 10))
        warm = LoadConfig(url=stack.url, sessions=20, messages=2, think=0.1)
        await loadtest(warm, MessagePlan(run_id="warm"), users, duration=60)  # warm the server

        plan = MessagePlan(run_id=secrets.token_hex(3))  # the same texts in both phases
        cfg = LoadConfig(url=stack.url, sessions=args.sessions, messages=args.messages,
                         think=args.think, ramp_up=args.ramp_up, steady=args.steady)
        print(f"direct to the mock: {args.sessions} concurrent streams x {args.messages}")
        direct, elapsed = await direct_phase(stack.mock_url, cfg, plan)
        d = summarize(direct, sessions=args.sessions,
                      messages_planned=args.sessions * args.messages, duration=elapsed)

        print(f"through the server: {args.sessions} WebSocket sessions x {args.messages}")
        cpu0, t0 = _server_cpu(stack.cpu_pids), time.monotonic()
        with py_spy(stack.server_pid, args.py_spy):
            result = await loadtest(cfg, plan, users, duration=600)
        cpu = (_server_cpu(stack.cpu_pids) - cpu0) / (time.monotonic() - t0)
        s = result.summary

    for name, summary in (("direct", d), ("server", s)):
        print(f"{name}: {summary.answers_complete} answers, {summary.failures} failures "
              f"(errors {summary.errors}, mismatches {summary.mismatches})")
        print_dist("first delta (ms)", summary.ttft_ms)
        print_dist("total (ms)", summary.total_ms)
    print(f"server CPU during its phase ({args.server_workers} worker(s)): {cpu:.0%} of one "
          f"core; frames/answer p50 {s.frames_per_answer.p50:.0f} (64 without coalescing)")

    for name, rec in (("direct", direct), ("server", result.recorder)):
        first = Distribution.of([m.ttft * 1000 for m in rec.messages
                                 if m.index == 0 and m.ttft is not None])
        later = Distribution.of([m.ttft * 1000 for m in rec.messages
                                 if m.index > 0 and m.ttft is not None])
        print(f"{name} first delta, first message of a session: p50 {first.p50:.1f} p99 "
              f"{first.p99:.1f} ms; later messages: p50 {later.p50:.1f} p99 {later.p99:.1f} ms")

    def added(a: Distribution, b: Distribution) -> str:
        return f"p50 {b.p50 - a.p50:+.1f} ms   p99 {b.p99 - a.p99:+.1f} ms"

    print(f"ADDED time to first delta: {added(d.ttft_ms, s.ttft_ms)}  (target p50 <= 10, "
          f"p99 <= 50)")
    print(f"ADDED total time:          {added(d.total_ms, s.total_ms)}")
    if args.py_spy and args.py_spy.exists():
        print("\nserver profile (py-spy, self % / total %):")
        for name, own, total in top_frames(args.py_spy):
            print(f"  {own:5.1f} {total:5.1f}  {name[:150]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--py-spy", type=Path, help="profile the server's phase into this "
                   "collapsed-stack file and print its busiest functions")
    p.add_argument("--messages", type=int, default=5)
    p.add_argument("--think", type=float, default=5.0)
    p.add_argument("--steady", action="store_true", help="open every session during the "
                   "ramp-up, then chat, each session starting at a random point of one think "
                   "time (the steady state, without the connection storm)")
    p.add_argument("--server-workers", type=int, default=1, help="the server's worker "
                   "processes (WORKERS, default 1). CPU is summed over the workers and their "
                   "parent; --py-spy profiles the first worker")
    p.add_argument("--ramp-up", type=float, default=5.0, help="seconds to start all sessions "
                   "(the same in both phases)")
    trio.run(bench, p.parse_args())


if __name__ == "__main__":
    main()
