"""What forwarding through Redis costs: a socket on the process that owns its session against a
socket on another process.

    python -m scripts.bench_scale_out [--sessions 200] [--messages 3] [--rounds 2] \\
        [--tokens 64] [--delay-ms 10] [--users 20] [--env KEY=VALUE ...] [--json out.json]

Two server processes on two ports (``bench_stack(servers=2)``: separate ``scripts.serve``
processes, one MariaDB database, one Redis prefix, one mock upstream), a warm-up on each, then
``--rounds`` rounds of two phases, in alternating order (the machine's drift falls on both):

- **local**: ``--sessions`` sockets on process A, each on a room of its own, so A owns each
  session and its socket;
- **remote**: ``--sessions`` new rooms are opened on A and their sockets closed (A keeps the
  sessions: they stop only when idle), then one socket per room is opened on B. B owns none
  of them: every message goes B → Redis (the session's inbox) → A, and every frame comes back
  A → Redis (B's mail stream) → B.

In each phase every socket sends ``--messages`` messages back to back, all sockets together;
each answer is read whole and checked against the mock's. Reported per phase: first delta
(send → first answer frame) p50/p99, answers/s, and the CPU of both server processes together
(``/proc``, user + system) per complete answer. **Forwarding CPU per answer** = remote minus
local, and the first-delta difference is the latency of the two Redis hops.

``RESULT: OK`` when every answer came whole in both phases; otherwise ``RESULT: FAIL``, exit 1.
"""

from __future__ import annotations

import argparse
import math
import secrets
import sys
from dataclasses import dataclass
from statistics import median
from typing import Any

import trio

from scripts.bench_common import Stack, bench_stack, print_dist, stack_cpu
from scripts.bench_cpu import SocketHolder, add_run_args, chat, parse_env, warm_up, write_json
from scripts.loadtest import raise_open_files_limit
from scripts.loadtest_client import Credentials, collector_paused, provision_users
from scripts.loadtest_stats import Summary, summarize
from scripts.loadtest_verify import MessagePlan


@dataclass
class Phase:
    mode: str  # "local" or "remote"
    answers: int
    seconds: float
    cpu_s: float
    summary: Summary

    @property
    def cpu_ms_per_answer(self) -> float:
        return 1000.0 * self.cpu_s / self.answers if self.answers else math.nan

    @property
    def failures(self) -> int:
        return self.summary.failures + self.summary.unanswered

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        return {"mode": self.mode, "answers": self.answers, "seconds": self.seconds,
                "cpu_s": self.cpu_s, "cpu_ms_per_answer": self.cpu_ms_per_answer,
                "answers_per_s": s.messages_per_s, "first_delta_p50_ms": s.ttft_ms.p50,
                "first_delta_p99_ms": s.ttft_ms.p99, "failures": self.failures}


async def phase(stack: Stack, users: list[Credentials], mode: str,
                args: argparse.Namespace) -> Phase:
    owner, other = stack.urls
    run = secrets.token_hex(3)
    tag = f"scale-{mode}-{run}"
    if mode == "remote":  # the sessions start on A (and stay there once their socket closes)
        primer = SocketHolder(owner, users, tag, args.sessions, concurrency=50)
        async with trio.open_nursery() as nursery:
            await primer.start(nursery)
            await primer.settled.wait()
            primer.release.set()
        if primer.opened != args.sessions:
            raise SystemExit(f"only {primer.opened} of {args.sessions} sessions started on A")
    holder = SocketHolder(other if mode == "remote" else owner, users, tag, args.sessions,
                          concurrency=50, connect_timeout=args.connect_timeout)
    plan = MessagePlan(run_id=run, default_tokens=args.tokens)
    rec = holder.rec
    async with trio.open_nursery() as nursery:
        await holder.start(nursery)
        await holder.settled.wait()
        await trio.sleep(1)  # the sockets' start-up stays out of the measurement
        with collector_paused():
            cpu0 = stack_cpu(stack)
            rec.started = t0 = trio.current_time()
            async with trio.open_nursery() as chats:
                for i, (ws, room) in sorted(holder.sockets.items()):
                    chats.start_soon(chat, ws, room, i, args.messages, plan, rec,
                                     args.answer_timeout)
            cpu1, t1 = stack_cpu(stack), trio.current_time()
        holder.release.set()
    summary = summarize(rec, sessions=args.sessions, messages_planned=args.sessions
                        * args.messages, duration=t1 - t0)
    return Phase(mode, summary.answers_complete, t1 - t0, cpu1 - cpu0, summary)


def report(phases: list[Phase]) -> None:
    for p in phases:
        s = p.summary
        print(f"\n{p.mode}: {p.answers} complete answers in {p.seconds:.2f} s = "
              f"{s.messages_per_s:.1f}/s; servers' CPU {p.cpu_ms_per_answer:.2f} ms per answer; "
              f"errors {s.errors or 'none'}, mismatches {s.mismatches or 'none'}, "
              f"unanswered {s.unanswered}")
        print_dist("first delta (ms)", s.ttft_ms)
    print("\nsummary (median of the rounds):")
    for mode in ("local", "remote"):
        mine = [p for p in phases if p.mode == mode]
        print(f"  {mode:<6}  first delta p50 {median(p.summary.ttft_ms.p50 for p in mine):7.1f} "
              f"ms  p99 {median(p.summary.ttft_ms.p99 for p in mine):7.1f} ms  CPU/answer "
              f"{median(p.cpu_ms_per_answer for p in mine):6.2f} ms  answers/s "
              f"{median(p.summary.messages_per_s for p in mine):6.1f}")
    local = median(p.cpu_ms_per_answer for p in phases if p.mode == "local")
    remote = median(p.cpu_ms_per_answer for p in phases if p.mode == "remote")
    print(f"forwarding CPU per answer (remote - local): {remote - local:.2f} ms "
          f"({remote / local:.2f}x)")


async def bench(args: argparse.Namespace) -> int:
    env = parse_env(args.env)
    print(f"two server processes; {args.sessions} sessions x {args.messages} messages per "
          f"phase; mock {args.tokens} tokens x {args.delay_ms:g} ms; settings {env or 'defaults'}",
          flush=True)
    phases: list[Phase] = []
    with bench_stack(tokens=args.tokens, delay_ms=args.delay_ms, servers=2, env=env) as stack:
        users = await provision_users(stack.url, args.users)
        for url in stack.urls:
            await warm_up(Stack(url=url, mock_url=stack.mock_url, server_pids=(),
                                mock_pid=stack.mock_pid), users)
        for r in range(args.rounds):
            for mode in (("local", "remote") if r % 2 == 0 else ("remote", "local")):
                done = await phase(stack, users, mode, args)
                print(f"round {r + 1} {mode}: {done.answers} answers, first delta p50 "
                      f"{done.summary.ttft_ms.p50:.1f} ms, {done.cpu_ms_per_answer:.2f} ms CPU "
                      f"per answer", flush=True)
                phases.append(done)
                await trio.sleep(1)
    report(phases)
    ok = all(p.failures == 0 and p.answers == args.sessions * args.messages for p in phases)
    print("RESULT: " + ("OK" if ok else "FAIL"))
    write_json(args, env, {"phases": [p.to_json() for p in phases]}, ok)
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_scale_out", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=200, help="sockets (rooms) per phase")
    p.add_argument("--messages", type=int, default=3, help="messages per socket, back to back")
    p.add_argument("--rounds", type=int, default=2, help="local + remote pairs, alternating")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--delay-ms", type=float, default=10.0)
    p.add_argument("--users", type=int, default=20, help="users (one API key each)")
    add_run_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    raise_open_files_limit(1 << 20)
    return trio.run(bench, args)


if __name__ == "__main__":
    sys.exit(main())
