"""Server CPU per WebSocket connection and per streamed answer, from /proc of the server worker.

    python -m scripts.bench_cpu [--connections 500] [--connect-concurrency 50] \\
        [--sessions 50] [--messages 12] [--tokens 64] [--delay-ms 10] [--env KEY=VALUE ...] \\
        [--py-spy answers.txt] [--py-spy-connect connect.txt] [--json out.json]

One mock upstream (``--tokens`` tokens, ``--delay-ms`` ms per token) and one chat server
process (``bench_stack``); ``--env`` settings go to the server (e.g. ``DELTA_INTERVAL=0`` to
compare). After a warm-up (20 sessions x 2 messages through ``loadtest``):

1. Connections: ``--connections`` new sockets, each on a room of its own (so each one is a key
   check, a session actor started, its room loaded from Redis, an init frame), at most
   ``--connect-concurrency`` handshakes in flight, each waiting for its init frame. **CPU per
   connection** = the worker's CPU (user + system, ``cpu_seconds``) from just before the first
   connect to just after the last init frame, divided by the sockets opened. They are then held
   open for ``--hold`` seconds, counted in neither figure (the idle rate is shown, for
   reference), and closed all at once: **CPU per close** = CPU from the release to the last
   client close completed, divided by the sockets. The session actors outlive their sockets
   (they stop when idle, SESSION_IDLE_SECONDS): their stop is not in the close figure.
2. Answers: ``--sessions`` sockets are opened the same way (not counted), then each sends
   ``--messages`` messages back to back (no think time), all sessions starting together. Every
   answer is read whole (``read_answer``) and checked against the mock's (``compare``). **CPU
   per answer** = CPU from the first message sent to the last answer read, divided by the
   complete answers; answers/s = complete answers / that time.

Any failed handshake, answer error, close or mismatch prints ``RESULT: FAIL`` (exit status 1).
CPU comes from /proc in clock ticks (10 ms): use enough sockets and answers. The load generator
shares the machine's cores with the server (its cyclic collector is off while it measures).
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
)

from scripts.bench_common import (
    Stack,
    bench_stack,
    cpu_seconds,
    main_thread_cpu_seconds,
    print_dist,
    proc_status,
    profile_areas,
    py_spy,
    top_frames,
)
from scripts.loadtest import loadtest, raise_open_files_limit
from scripts.loadtest_client import (
    ChatSocket,
    Credentials,
    LoadConfig,
    _first,
    collector_paused,
    open_held_session,
    provision_users,
    read_answer,
    ws_url,
)
from scripts.loadtest_stats import (
    Distribution,
    MessageResult,
    Recorder,
    Summary,
    nan_to_none,
    summarize,
)
from scripts.loadtest_verify import MessagePlan, compare

#: py-spy needs a moment to attach: a profiled phase starts this long after it (not measured).
PY_SPY_ATTACH = 1.0


def handshake_error_kind(exc: BaseException) -> str | None:
    """The load test's name for a failed handshake (the kinds ``run_session`` counts in
    ``Recorder.session_errors``); None for anything else (a bug: re-raised)."""
    inner = _first(exc)
    if isinstance(inner, ConnectionClosed):
        return "closed_before_init"  # run_session counts it as an unexpected close
    if isinstance(inner, ConnectionRejected):
        return f"rejected_{inner.status_code}"
    if isinstance(inner, (ConnectionTimeout, trio.TooSlowError)):
        return "connect_timeout"
    if isinstance(inner, (HandshakeError, OSError, trio.BrokenResourceError)):
        return "connect_failed"
    return None


@dataclass
class SocketHolder:
    """Opens ``count`` sockets, each on a room of its own (``{tag}-{i}``), and holds them open
    until ``release`` is set. Connect and init times go to ``rec`` (``open_session``), failed
    handshakes to ``rec.session_errors`` by kind; ``settled`` is set once every socket is open
    or failed. ``concurrency`` bounds the handshakes in flight (None: no bound)."""

    base_url: str
    users: Sequence[Credentials]
    tag: str
    count: int
    concurrency: int | None = None
    connect_timeout: float = 30.0
    rec: Recorder = field(default_factory=Recorder)
    sockets: dict[int, tuple[WebSocketConnection, str]] = field(default_factory=dict)
    close_errors: Counter[str] = field(default_factory=Counter)
    settled: trio.Event = field(default_factory=trio.Event)
    release: trio.Event = field(default_factory=trio.Event)
    first_at: float = math.nan  # clock of the first connect started
    settled_at: float = math.nan  # clock of the last init frame (or failure)

    def __post_init__(self) -> None:
        self._gate = trio.Semaphore(self.concurrency) if self.concurrency else None
        self._settled_count = 0

    @property
    def opened(self) -> int:
        return len(self.rec.init_times)

    @property
    def failed(self) -> int:
        return sum(self.rec.session_errors.values())

    def closed_early(self) -> int:
        """Held sockets the server has closed (before ``release``)."""
        return sum(1 for ws, _room in self.sockets.values() if ws.closed is not None)

    def _settle(self) -> None:
        self._settled_count += 1
        if self._settled_count == self.count:
            self.settled_at = trio.current_time()
            self.settled.set()

    async def start(self, nursery: trio.Nursery, ramp_up: float = 0.0) -> None:
        """Start every socket's task, spread evenly over ``ramp_up`` seconds (returns when the
        last one is started, not opened: wait for ``settled``)."""
        t0 = self.first_at = trio.current_time()
        for i in range(self.count):
            if ramp_up > 0 and i:
                await trio.sleep_until(t0 + ramp_up * i / self.count)
            nursery.start_soon(self.hold, i)

    async def hold(self, i: int) -> None:
        room = f"{self.tag}-{i}"
        url = ws_url(self.base_url, self.users[i % len(self.users)].access_key, room)
        gated = self._gate is not None
        opened = False
        if self._gate is not None:
            await self._gate.acquire()
        try:
            async with open_held_session(url, self.rec,
                                         connect_timeout=self.connect_timeout) as ws:
                opened = True
                if self._gate is not None and gated:
                    self._gate.release()
                    gated = False
                self.rec.session_opened()
                self.sockets[i] = (ws, room)
                self._settle()
                try:
                    await self.release.wait()
                finally:
                    self.rec.sessions_open -= 1
        except Exception as exc:
            if opened:  # closing it failed (a disconnect timeout, ...)
                self.close_errors[type(_first(exc)).__name__] += 1
            else:
                kind = handshake_error_kind(exc)
                if kind is None:
                    raise
                self.rec.session_errors[kind] += 1
                self._settle()
        finally:
            if self._gate is not None and gated:
                self._gate.release()
            self.rec.sessions_done += 1


async def chat(ws: ChatSocket, room: str, i: int, messages: int, plan: MessagePlan,
               rec: Recorder, answer_timeout: float) -> None:
    """``messages`` messages back to back on one held socket, each answer read whole and
    checked (into ``rec.messages``, as ``run_session`` records them)."""
    for k in range(messages):
        text = plan.text(i, k)
        msg = MessageResult(session=i, index=k, sent_at=trio.current_time() - rec.started)
        rec.messages.append(msg)
        sent = trio.current_time()
        try:
            await ws.send_message(json.dumps({"msg": text, "chat_room_id": room}))
            with trio.move_on_after(answer_timeout) as scope:
                received = await read_answer(ws, msg, rec, sent)
        except ConnectionClosed:
            msg.error = "closed"
            rec.unexpected_closes += 1
            return
        if scope.cancelled_caught:
            msg.error = "timeout"
            return  # the stream is out of step: stop this session
        if msg.error is None:
            msg.mismatch = compare(received, plan.expected(text))
        rec.answers_done += 1


def ms_dist(values: Sequence[float]) -> Distribution:
    return Distribution.of([v * 1000.0 for v in values])


def parse_env(pairs: Sequence[str] | None) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The options bench_cpu and bench_storm share: server settings, timeouts, the JSON file."""
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="a server setting (repeatable), e.g. DELTA_INTERVAL=0")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--answer-timeout", type=float, default=60.0)
    p.add_argument("--json", type=Path, help="write the numbers here")


def write_json(args: argparse.Namespace, env: dict[str, str], data: dict[str, Any],
               ok: bool) -> None:
    """``data`` with the run's arguments, server settings and result, to ``--json``."""
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "server_env": env, **data, "result": "OK" if ok else "FAIL"}, indent=1))


async def warm_up(stack: Stack, users: Sequence[Credentials]) -> None:
    warm = await loadtest(LoadConfig(url=stack.url, sessions=20, messages=2, think=0.1),
                          MessagePlan(run_id="warm-" + secrets.token_hex(3)), users, duration=60)
    s = warm.summary
    print(f"warm-up: {s.answers_complete} answers, {s.failures} failures", flush=True)
    await trio.sleep(1)  # its tail stays out of the first measurement


@dataclass
class ConnectResult:
    sockets: int
    opened: int
    failed: dict[str, int]
    seconds: float
    cpu_s: float
    close_seconds: float
    close_cpu_s: float
    close_errors: dict[str, int]
    closed_by_server: int
    idle_cpu_ms_per_s: float
    rss_before_kib: int
    rss_open_kib: int
    connect_ms: Distribution
    init_ms: Distribution

    @property
    def cpu_ms_per_connection(self) -> float:
        return 1000.0 * self.cpu_s / self.opened if self.opened else math.nan

    @property
    def cpu_ms_per_close(self) -> float:
        return 1000.0 * self.close_cpu_s / self.opened if self.opened else math.nan

    @property
    def failures(self) -> int:
        return sum(self.failed.values()) + sum(self.close_errors.values()) + self.closed_by_server

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(cpu_ms_per_connection=self.cpu_ms_per_connection,
                    cpu_ms_per_close=self.cpu_ms_per_close, failures=self.failures)
        clean: dict[str, Any] = nan_to_none(data)
        return clean


async def connect_phase(stack: Stack, users: Sequence[Credentials],
                        args: argparse.Namespace) -> ConnectResult:
    pid = stack.server_pid
    holder = SocketHolder(stack.url, users, f"cpu-conn-{secrets.token_hex(3)}", args.connections,
                          concurrency=args.connect_concurrency,
                          connect_timeout=args.connect_timeout)
    rss0 = proc_status(pid)
    with collector_paused():
        async with trio.open_nursery() as nursery:
            with py_spy(pid, args.py_spy_connect, blocking=args.py_spy_blocking):
                if args.py_spy_connect:
                    await trio.sleep(PY_SPY_ATTACH)
                cpu0 = cpu_seconds(pid)
                await holder.start(nursery)
                await holder.settled.wait()
                cpu1 = cpu_seconds(pid)
            rss1 = proc_status(pid)
            # Held open, measured in neither figure (the idle rate only, for reference).
            idle0, t_idle = cpu_seconds(pid), time.monotonic()
            await trio.sleep(args.hold)
            idle_rate = (cpu_seconds(pid) - idle0) / (time.monotonic() - t_idle)
            closed_by_server = holder.closed_early()
            cpu2, t2 = cpu_seconds(pid), trio.current_time()
            holder.release.set()
        cpu3, t3 = cpu_seconds(pid), trio.current_time()
    return ConnectResult(
        sockets=args.connections, opened=holder.opened, failed=dict(holder.rec.session_errors),
        seconds=holder.settled_at - holder.first_at, cpu_s=cpu1 - cpu0,
        close_seconds=t3 - t2, close_cpu_s=cpu3 - cpu2, close_errors=dict(holder.close_errors),
        closed_by_server=closed_by_server, idle_cpu_ms_per_s=1000.0 * idle_rate,
        rss_before_kib=rss0, rss_open_kib=rss1,
        connect_ms=ms_dist(holder.rec.connect_times), init_ms=ms_dist(holder.rec.init_times))


@dataclass
class AnswerResult:
    sessions: int
    messages: int
    tokens: int
    failed_handshakes: dict[str, int]
    seconds: float
    cpu_s: float
    main_thread_cpu_s: float  # Trio's thread; the rest is the storage bridge and workers
    summary: Summary

    @property
    def answers(self) -> int:
        return self.summary.answers_complete

    @property
    def cpu_ms_per_answer(self) -> float:
        return 1000.0 * self.cpu_s / self.answers if self.answers else math.nan

    @property
    def failures(self) -> int:
        return sum(self.failed_handshakes.values()) + self.summary.failures

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "summary"}
        data.update(answers=self.answers, cpu_ms_per_answer=self.cpu_ms_per_answer,
                    answers_per_s=self.summary.messages_per_s, failures=self.failures,
                    unanswered=self.summary.unanswered,
                    summary=self.summary.to_json())
        clean: dict[str, Any] = nan_to_none(data)
        return clean


async def answer_phase(stack: Stack, users: Sequence[Credentials],
                       args: argparse.Namespace) -> AnswerResult:
    pid = stack.server_pid
    run = secrets.token_hex(3)
    plan = MessagePlan(run_id=run, default_tokens=args.tokens)
    holder = SocketHolder(stack.url, users, f"cpu-chat-{run}", args.sessions,
                          concurrency=args.connect_concurrency,
                          connect_timeout=args.connect_timeout)
    rec = holder.rec
    async with trio.open_nursery() as nursery:
        await holder.start(nursery)
        await holder.settled.wait()
        await trio.sleep(1)  # the sessions' start-up stays out of the measurement
        with py_spy(pid, args.py_spy, blocking=args.py_spy_blocking):
            if args.py_spy:
                await trio.sleep(PY_SPY_ATTACH)
            with collector_paused():
                cpu0, main0 = cpu_seconds(pid), main_thread_cpu_seconds(pid)
                rec.started = t0 = trio.current_time()
                async with trio.open_nursery() as chats:
                    for i, (ws, room) in sorted(holder.sockets.items()):
                        chats.start_soon(chat, ws, room, i, args.messages, plan, rec,
                                         args.answer_timeout)
                cpu1, t1 = cpu_seconds(pid), trio.current_time()
                main1 = main_thread_cpu_seconds(pid)
        holder.release.set()
    planned = args.sessions * args.messages
    summary = summarize(rec, sessions=args.sessions, messages_planned=planned, duration=t1 - t0)
    return AnswerResult(sessions=args.sessions, messages=args.messages, tokens=args.tokens,
                        failed_handshakes=dict(rec.session_errors), seconds=t1 - t0,
                        cpu_s=cpu1 - cpu0, main_thread_cpu_s=main1 - main0, summary=summary)


def print_profile(path: Path | None, title: str) -> None:
    if path and path.exists():
        print(f"\nserver profile, {title} (py-spy, self % / total %):")
        for name, own, total in top_frames(path):
            print(f"  {own:5.1f} {total:5.1f}  {name[:150]}")
        print(f"\nwhere the server's busy samples went, {title}:")
        for area, share in profile_areas(path):
            print(f"  {share:5.1f} %  {area}")


def report(c: ConnectResult, a: AnswerResult, args: argparse.Namespace) -> None:
    print(f"\nconnections: {c.opened:,} of {c.sockets:,} sockets opened (each a new room) in "
          f"{c.seconds:.2f} s, at most {args.connect_concurrency} handshakes at once; "
          f"failed: {c.failed or 'none'}")
    print_dist("connect (ms)", c.connect_ms)
    print_dist("init frame (ms)", c.init_ms)
    per = (c.rss_open_kib - c.rss_before_kib) / c.opened if c.opened else math.nan
    print(f"  server RSS {c.rss_before_kib / 1024:.1f} MiB before, {c.rss_open_kib / 1024:.1f} "
          f"MiB with them open ({per:+.1f} KiB per socket)")
    print(f"  held {args.hold:g} s (not counted): server CPU {c.idle_cpu_ms_per_s:.1f} ms/s; "
          f"closed by the server meanwhile: {c.closed_by_server}")
    print(f"  closed all in {c.close_seconds:.2f} s; close errors: {c.close_errors or 'none'}")
    s = a.summary
    print(f"\nanswers: {a.sessions} sessions x {a.messages} messages back to back: "
          f"{a.answers:,} complete of {s.messages_planned:,} in {a.seconds:.2f} s = "
          f"{s.messages_per_s:.1f} answers/s")
    print(f"  frames per answer p50 {s.frames_per_answer.p50:.0f}; first delta p50 "
          f"{s.ttft_ms.p50:.1f} ms, p99 {s.ttft_ms.p99:.1f} ms")
    print_dist("first delta (ms)", s.ttft_ms)
    print_dist("answer total (ms)", s.total_ms)
    print(f"  handshakes failed: {a.failed_handshakes or 'none'}; errors: {s.errors or 'none'}; "
          f"unexpected closes: {s.unexpected_closes}; mismatches: {s.mismatches or 'none'}; "
          f"unanswered: {s.unanswered}")
    print_profile(args.py_spy_connect, "connect phase")
    print_profile(args.py_spy, "answer phase")
    print()
    print(f"CPU per connection: {c.cpu_ms_per_connection:.2f} ms ({c.opened} sockets)")
    print(f"CPU per close: {c.cpu_ms_per_close:.2f} ms ({c.opened} sockets)")
    print(f"CPU per answer: {a.cpu_ms_per_answer:.2f} ms ({a.answers} answers, "
          f"{a.tokens} tokens)")
    if a.answers:
        main = 1000.0 * a.main_thread_cpu_s / a.answers
        print(f"  of which Trio's thread {main:.2f} ms, the storage bridge and other threads "
              f"{a.cpu_ms_per_answer - main:.2f} ms")


async def bench(args: argparse.Namespace) -> int:
    env = parse_env(args.env)
    print(f"server settings: {env or 'defaults'}; mock: {args.tokens} tokens, "
          f"{args.delay_ms:g} ms per token", flush=True)
    with bench_stack(tokens=args.tokens, delay_ms=args.delay_ms, env=env) as stack:
        users = await provision_users(stack.url, args.users)
        await warm_up(stack, users)
        c = await connect_phase(stack, users, args)
        print(f"connections: {c.opened} opened, {c.cpu_ms_per_connection:.2f} ms CPU each",
              flush=True)
        await trio.sleep(1)
        a = await answer_phase(stack, users, args)
    report(c, a, args)
    ok = (c.failures == 0 and a.failures == 0 and c.opened == c.sockets
          and a.summary.unanswered == 0)
    print("RESULT: " + ("OK" if ok else f"FAIL ({c.failures + a.failures} failures, "
                                        f"{a.summary.unanswered} unanswered)"))
    write_json(args, env, {"connect": c.to_json(), "answer": a.to_json()}, ok)
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=500, help="sockets of the connect phase")
    p.add_argument("--connect-concurrency", type=int, default=50,
                   help="handshakes in flight at most (both phases)")
    p.add_argument("--hold", type=float, default=2.0,
                   help="seconds the connect phase's sockets stay open before they are closed")
    p.add_argument("--sessions", type=int, default=50, help="sockets of the answer phase")
    p.add_argument("--messages", type=int, default=12, help="messages per answer-phase socket")
    p.add_argument("--users", type=int, default=10, help="users (one API key each) the sockets "
                   "are spread over")
    p.add_argument("--tokens", type=int, default=64, help="the mock's answer length")
    p.add_argument("--delay-ms", type=float, default=10.0, help="the mock's ms per token")
    add_run_args(p)
    p.add_argument("--py-spy", type=Path, help="profile the server during the answer phase into "
                   "this collapsed-stack file and print its busiest functions")
    p.add_argument("--py-spy-connect", type=Path, help="the same for the connect phase")
    p.add_argument("--py-spy-blocking", action="store_true",
                   help="py-spy pauses the server for each sample: whole stacks (the areas "
                   "summary needs them), but the measured CPU is then higher")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    raise_open_files_limit(2 * max(args.connections, args.sessions) + 1024)
    return trio.run(bench, args)


if __name__ == "__main__":
    sys.exit(main())
