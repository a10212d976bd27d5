"""Connection storm: many sockets connecting within a few seconds, optionally chatting at once.

    python -m scripts.bench_storm [--sessions 1000] [--ramp-up 5] [--messages 0] \\
        [--users 20] [--hold 2] [--workers 1] [--env KEY=VALUE ...] [--py-spy storm.txt] \
        [--json out.json]

One mock upstream (64 tokens, 10 ms per token) and one chat server process (``bench_stack``,
Hypercorn ``--backlog 4096`` unless ``--backlog`` says otherwise; ``--workers N``: N worker
processes on that one port, as ``WORKERS=N make run`` runs them, CPU and RSS summed over them,
``--py-spy`` on the first), a warm-up (20 sessions x 2
messages), then ``--sessions`` sockets, each on a room of its own (its own session actor),
their connects started evenly over ``--ramp-up`` seconds, with no bound on the handshakes in
flight.

``--messages 0``: every socket is held open once it has its init frame (``SocketHolder`` of
``bench_cpu``; the load test's sessions would close right after it) until all are open or
failed, stays open ``--hold`` seconds more, then all close. Reported: handshakes failed by kind
(``rejected_STATUS``, ``connect_failed``, ``connect_timeout``, as the load test counts them),
the most sockets open at once, connect and init times, server CPU (worker, /proc) from just
before the first connect to the last init frame, in total and per socket opened (that window
includes the ramp-up's idle time: the idle rate while held is shown for comparison), the
server's RSS with all open and its peak during the storm (VmHWM, reset just before it through
``/proc/PID/clear_refs``; the peak since start where that is refused).

``--messages N``: the load test's sessions (``loadtest``, no think time): each connects and
sends its N messages back to back at once, every answer read whole and checked, then closes.
Complete answers/s = complete answers / (end of the last complete answer - send of the first
message). Server CPU is measured over the whole storm (connects + answers + closes: the parts
are not separable) and shown in total and divided by the complete answers.

``RESULT: OK`` when no handshake failed and there was no error, unexpected close, mismatch or
unanswered message; else ``RESULT: FAIL`` and exit status 1.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from scripts.bench_common import (
    Stack,
    bench_stack,
    box_cpu_seconds,
    print_dist,
    proc_status,
    py_spy,
    stack_cpu,
)
from scripts.bench_cpu import (
    PY_SPY_ATTACH,
    SocketHolder,
    add_run_args,
    ms_dist,
    parse_env,
    print_profile,
    warm_up,
    write_json,
)
from scripts.loadtest import loadtest, raise_open_files_limit
from scripts.loadtest_client import Credentials, LoadConfig, collector_paused, provision_users
from scripts.loadtest_stats import Distribution, nan_to_none
from scripts.loadtest_verify import MessagePlan

TOKENS = 64
DELAY_MS = 10.0
BACKLOG = 4096  # LISTEN_BACKLOG's default, which bench_stack passes to hypercorn


def _kernel_limit(name: str) -> str:
    try:
        return Path(f"/proc/sys/net/{name}").read_text().strip()
    except OSError:
        return "?"


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (``/proc/PID/clear_refs``), so that the peak
    read after the storm is the storm's, not that of the start-up and warm-up (~450 MiB here)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def stack_kib(stack: Stack, field: str = "VmRSS") -> int:
    """A ``/proc`` memory field summed over the serving processes."""
    return sum(proc_status(pid, field) for pid in stack.server_pids)


def reset_stack_peaks(stack: Stack) -> bool:
    done = [reset_peak_rss(pid) for pid in stack.server_pids]  # each one, not the first only
    return all(done)


def peak_label(reset: bool) -> str:
    return "peak RSS during the storm (VmHWM)" if reset else "peak RSS since start (VmHWM)"


def _dist_json(d: Distribution) -> dict[str, Any]:
    clean: dict[str, Any] = nan_to_none(asdict(d))
    return clean


def print_connects(connect_ms: Distribution, init_ms: Distribution) -> None:
    print_dist("connect (ms)", connect_ms)
    print(f"  {'init frame (ms)':<22} p50 {init_ms.p50:9.1f}  p99 {init_ms.p99:9.1f}"
          f"  (n={init_ms.count})")


async def storm_open(stack: Stack, users: Sequence[Credentials], args: argparse.Namespace
                     ) -> tuple[bool, dict[str, Any]]:
    """``--messages 0``: open every socket, hold them all open, close them."""
    pid = stack.server_pid
    holder = SocketHolder(stack.url, users, f"storm-{secrets.token_hex(3)}", args.sessions,
                          connect_timeout=args.connect_timeout)
    rec = holder.rec
    reset = reset_stack_peaks(stack)
    rss0 = stack_kib(stack)
    with collector_paused():
        async with trio.open_nursery() as nursery:
            with py_spy(pid, args.py_spy):
                if args.py_spy:
                    await trio.sleep(PY_SPY_ATTACH)
                cpu0 = stack_cpu(stack)
                await holder.start(nursery, ramp_up=args.ramp_up)
                await holder.settled.wait()
                cpu1 = stack_cpu(stack)
            rss1 = stack_kib(stack)
            idle0, t_idle = stack_cpu(stack), time.monotonic()
            await trio.sleep(args.hold)
            idle_rate = (stack_cpu(stack) - idle0) / (time.monotonic() - t_idle)
            closed_by_server = holder.closed_early()
            t2 = trio.current_time()
            holder.release.set()
        close_s = trio.current_time() - t2
    peak = stack_kib(stack, "VmHWM")
    connect_ms, init_ms = ms_dist(rec.connect_times), ms_dist(rec.init_times)
    cpu = cpu1 - cpu0
    opened = holder.opened
    per = 1000.0 * cpu / opened if opened else math.nan
    span = holder.settled_at - holder.first_at

    print(f"\nstorm: {args.sessions:,} sockets started over {args.ramp_up:g} s: {opened:,} "
          f"opened, all settled {span:.2f} s after the first connect; at most "
          f"{rec.peak_open:,} open at once")
    print(f"handshakes failed: {holder.failed} "
          f"({dict(sorted(rec.session_errors.items())) or 'none'})")
    print_connects(connect_ms, init_ms)
    print(f"held {args.hold:g} s: closed by the server meanwhile {closed_by_server}; "
          f"server CPU {1000 * idle_rate:.1f} ms/s idle with them open")
    print(f"closed all in {close_s:.2f} s; close errors: {dict(holder.close_errors) or 'none'}")
    print(f"server RSS {rss0 / 1024:.1f} MiB before, {rss1 / 1024:.1f} MiB with all open; "
          f"{peak_label(reset)} {peak / 1024:.1f} MiB")
    print_profile(args.py_spy, "storm")
    print()
    print(f"server CPU: {cpu:.2f} s total, first connect to last init frame ({span:.2f} s)")
    print(f"CPU per connection: {per:.2f} ms ({opened} sockets)")
    ok = (holder.failed == 0 and opened == args.sessions and closed_by_server == 0
          and not holder.close_errors)
    return ok, {
        "sessions": args.sessions, "opened": opened, "peak_open": rec.peak_open,
        "handshake_errors": dict(rec.session_errors), "close_errors": dict(holder.close_errors),
        "closed_by_server": closed_by_server, "settled_s": span, "close_s": close_s,
        "connect_ms": _dist_json(connect_ms), "init_ms": _dist_json(init_ms),
        "server_cpu_s": cpu, "cpu_ms_per_connection": nan_to_none(per),
        "idle_cpu_ms_per_s": 1000 * idle_rate,
        "rss_before_kib": rss0, "rss_open_kib": rss1, "peak_rss_kib": peak,
        "peak_rss_is_storms": reset}


async def storm_chat(stack: Stack, users: Sequence[Credentials], args: argparse.Namespace
                     ) -> tuple[bool, dict[str, Any]]:
    """``--messages N``: the load test's sessions, connecting over the ramp-up, chatting at
    once (no think time)."""
    pid = stack.server_pid
    cfg = LoadConfig(url=stack.url, sessions=args.sessions, messages=args.messages,
                     ramp_up=args.ramp_up, think=0.0, answer_timeout=args.answer_timeout,
                     connect_timeout=args.connect_timeout)
    plan = MessagePlan(run_id=secrets.token_hex(3), default_tokens=TOKENS)
    cap = args.ramp_up + args.connect_timeout + 5 + args.messages * args.answer_timeout + 30
    reset = reset_stack_peaks(stack)
    rss0 = stack_kib(stack)
    with py_spy(pid, args.py_spy):
        if args.py_spy:
            await trio.sleep(PY_SPY_ATTACH)
        box0 = box_cpu_seconds(stack)
        result = await loadtest(cfg, plan, users, duration=cap)
        box1 = box_cpu_seconds(stack)
        cpu = box1["server"] - box0["server"]
    peak = stack_kib(stack, "VmHWM")
    s, rec = result.summary, result.recorder
    done = [m for m in rec.messages if m.total is not None and m.error is None]
    first_sent = min((m.sent_at for m in rec.messages), default=math.nan)
    last_end = max((m.sent_at + m.total for m in done if m.total is not None), default=math.nan)
    window = last_end - first_sent
    rate = len(done) / window if window > 0 else math.nan
    per = 1000.0 * cpu / len(done) if done else math.nan
    handshakes = dict(sorted(rec.session_errors.items()))
    message_errors = {k: v for k, v in s.errors.items() if k not in rec.session_errors}

    print(f"\nstorm: {args.sessions:,} sessions started over {args.ramp_up:g} s, "
          f"{args.messages} messages each back to back; at most {s.peak_open:,} open at once; "
          f"run {s.duration:.1f} s")
    print(f"handshakes failed: {sum(handshakes.values())} ({handshakes or 'none'})")
    print_connects(s.connect_ms, s.init_ms)
    print(f"answers: {len(done):,} complete of {s.messages_planned:,} planned "
          f"({s.messages_sent:,} sent); errors {message_errors or 'none'}; unexpected closes "
          f"{s.unexpected_closes}; mismatches {s.mismatches or 'none'}; unanswered "
          f"{s.unanswered}")
    print(f"complete answers/s: {rate:.1f} ({len(done):,} answers / {window:.2f} s from the "
          f"first message sent to the end of the last complete answer)")
    print(f"first delta p50 {s.ttft_ms.p50:.1f} ms, p99 {s.ttft_ms.p99:.1f} ms; frames per "
          f"answer p50 {s.frames_per_answer.p50:.0f}")
    print_dist("first delta (ms)", s.ttft_ms)
    print_dist("answer total (ms)", s.total_ms)
    print(f"server RSS {rss0 / 1024:.1f} MiB before; {peak_label(reset)} {peak / 1024:.1f} MiB")
    print_profile(args.py_spy, "storm")
    print()
    box = {name: box1[name] - box0[name] for name in box1}
    print(f"CPU over the storm ({s.duration:.1f} s, {os.cpu_count()} cores): " + ", ".join(
        f"{name} {seconds:.2f} s" for name, seconds in box.items())
        + f"; together {sum(box.values()) / s.duration:.2f} cores")
    print(f"server CPU: {cpu:.2f} s total over the storm (connects + answers + closes)")
    print(f"CPU per answer (total / complete answers, connects included): {per:.2f} ms "
          f"({len(done)} answers, {TOKENS} tokens)")
    ok = s.failures == 0 and s.unanswered == 0 and not handshakes
    return ok, {
        "sessions": args.sessions, "messages": args.messages, "peak_open": s.peak_open,
        "handshake_errors": handshakes, "message_errors": message_errors,
        "answers_complete": len(done), "answers_per_s": nan_to_none(rate),
        "answer_window_s": nan_to_none(window), "server_cpu_s": cpu, "box_cpu_s": box,
        "cpu_ms_per_answer_incl_connects": nan_to_none(per), "rss_before_kib": rss0,
        "peak_rss_kib": peak, "peak_rss_is_storms": reset, "summary": s.to_json()}


async def bench(args: argparse.Namespace) -> int:
    env = parse_env(args.env)
    print(f"server settings: {env or 'defaults'}; listen backlog {args.backlog} (kernel somaxconn "
          f"{_kernel_limit('core/somaxconn')}, tcp_max_syn_backlog "
          f"{_kernel_limit('ipv4/tcp_max_syn_backlog')}, syncookies "
          f"{_kernel_limit('ipv4/tcp_syncookies')})", flush=True)
    with bench_stack(tokens=TOKENS, delay_ms=DELAY_MS, env=env, backlog=args.backlog,
                     server_workers=args.workers) as stack:
        users = await provision_users(stack.url, args.users)
        await warm_up(stack, users)
        if args.messages == 0:
            ok, data = await storm_open(stack, users, args)
        else:
            ok, data = await storm_chat(stack, users, args)
    print("RESULT: " + ("OK" if ok else "FAIL"))
    write_json(args, env, data, ok)
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_storm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=1000, help="sockets, each its own room")
    p.add_argument("--ramp-up", type=float, default=5.0,
                   help="seconds over which the connects start, evenly")
    p.add_argument("--messages", type=int, default=0,
                   help="messages per session (0: connect, hold all open, close)")
    p.add_argument("--users", type=int, default=20, help="users (one API key each)")
    p.add_argument("--workers", type=int, default=1,
                   help="server worker processes (WORKERS=N: one port, sessions shared through "
                        "Redis); CPU and memory are summed over them")
    p.add_argument("--hold", type=float, default=2.0,
                   help="--messages 0: seconds all stay open before they are closed")
    p.add_argument("--backlog", type=int, default=BACKLOG,
                   help=f"the server's listen backlog ({BACKLOG}, LISTEN_BACKLOG's default; "
                   "100 is Hypercorn's own)")
    add_run_args(p)
    p.add_argument("--py-spy", type=Path, help="profile the server during the storm into this "
                   "collapsed-stack file and print its busiest functions")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.sessions < 1 or args.messages < 0:
        p.error("--sessions must be >= 1 and --messages >= 0")
    raise_open_files_limit(2 * args.sessions + 1024)
    return trio.run(bench, args)


if __name__ == "__main__":
    sys.exit(main())
