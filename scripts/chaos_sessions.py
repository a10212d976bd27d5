"""The chaos run's chat sessions and REST probe, built on the load test's client.

A session is the load test's (``scripts.loadtest_client``: ``open_session`` reads the init
frame, ``read_answer`` reads up to the terminator or the error frame ending the answer;
``scripts.loadtest_verify``: the mock's exact answer), plus what a fault needs: when its socket
closes it reconnects (bounded) and goes on with its next message. A message is never sent twice:
one whose frame could not leave (the socket had already closed) goes out on the next socket;
one that left and got no answer (closed, timed out) is over. After a reconnect the session
lets an answer still resuming on the new socket end before it sends again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
)

from scripts.chaos_env import ChaosEnv
from scripts.chaos_report import ACK, CLOSED, ERROR, TIMEOUT, FaultStats, Outcome
from scripts.loadtest_client import (
    ChatSocket,
    Credentials,
    _first,
    open_session,
    read_answer,
    ws_url,
)
from scripts.loadtest_stats import MessageResult, Recorder
from scripts.loadtest_verify import MessagePlan, compare

QUIET = 0.3  # seconds without a frame: a reconnected socket has no old answer still coming


@dataclass(frozen=True)
class ChaosConfig:
    sessions: int = 40
    users: int = 10
    messages: int = 10
    think: float = 0.5
    ramp_up: float = 2.0
    fault_at: float = 5.0
    down: float = 3.0
    delay_ms: float = 20.0
    tokens: int | None = None
    duration: float = 75.0
    answer_timeout: float = 30.0
    reconnect_for: float = 45.0
    settle: float = 3.0
    shutdown_grace: float = 0.5
    shared_mariadb: bool = False


@dataclass
class Run:
    """One fault run in progress."""

    cfg: ChaosConfig
    env: ChaosEnv
    plan: MessagePlan
    stats: FaultStats = field(default_factory=FaultStats)
    outcomes: list[Outcome] = field(default_factory=list)
    rec: Recorder = field(default_factory=Recorder)
    gate: trio.Event | None = None  # set: the sessions may send their first message
    opened: int = 0  # sessions that got their first init frame

    def closed(self, exc: ConnectionClosed) -> None:
        self.stats.closes[str(exc.reason.code) if exc.reason is not None else "none"] += 1


async def converse(run: Run, ws: ChatSocket, i: int, room: str, k: int) -> int:
    """Send messages ``k``, ``k + 1``, ... on this socket; the next index when it is gone."""
    cfg = run.cfg
    while k < cfg.messages:
        if k == 0 and run.gate is not None:
            await run.gate.wait()
        elif k:
            await trio.sleep(cfg.think)
        outcome = Outcome(session=i, index=k, text=run.plan.text(i, k))
        result = MessageResult(session=i, index=k, sent_at=trio.current_time() - run.rec.started)
        sent = trio.current_time()
        try:
            await ws.send_message(json.dumps({"msg": outcome.text, "chat_room_id": room}))
        except ConnectionClosed as exc:  # closed before the frame left: send it again later
            run.stats.resent += 1
            run.closed(exc)
            return k
        run.outcomes.append(outcome)
        k += 1
        try:
            with trio.move_on_after(cfg.answer_timeout) as scope:
                outcome.received = await read_answer(ws, result, run.rec, sent)
        except ConnectionClosed as exc:
            outcome.status = CLOSED
            run.closed(exc)
            return k
        if scope.cancelled_caught:
            outcome.status = TIMEOUT
            return k  # out of step with the stream: a fresh socket
        if result.error is not None:
            outcome.status, outcome.code = ERROR, result.error
        else:
            outcome.status = ACK
            outcome.wrong = compare(outcome.received, run.plan.expected(outcome.text)) is not None
    return k


async def drain_quiet(ws: ChatSocket, bound: float) -> None:
    """After a reconnect: let an answer that was still running (resumed on this socket) end."""
    with trio.move_on_after(bound):
        while True:
            with trio.move_on_after(QUIET) as quiet:
                await ws.get_message()
            if quiet.cancelled_caught:
                return


async def session(run: Run, i: int, user: Credentials) -> None:
    """One chat session: its messages in order, reconnecting (bounded) when its socket goes."""
    cfg = run.cfg
    room = f"lt-{run.plan.run_id}-{i}"
    url = ws_url(run.env.url, user.access_key, room)
    k, first, give_up_at = 0, True, None
    for _ in range(cfg.messages * 4 + 10):  # connects: one, plus a few per message at most
        if k >= cfg.messages:
            return
        try:
            async with open_session(url, run.rec, connect_timeout=10) as ws:
                give_up_at = None
                if first:
                    run.opened += 1
                    first = False
                else:
                    await drain_quiet(ws, cfg.answer_timeout)
                k = await converse(run, ws, i, room, k)
                continue
        except BaseException as exc:  # sorted below; anything else is re-raised
            inner = _first(exc)
            if isinstance(inner, ConnectionClosed):
                run.closed(inner)
            elif isinstance(inner, ConnectionRejected):
                run.stats.connect_failures[f"rejected_{inner.status_code}"] += 1
            elif isinstance(inner, (ConnectionTimeout, trio.TooSlowError)):
                run.stats.connect_failures["timeout"] += 1
            elif isinstance(inner, (HandshakeError, OSError, trio.BrokenResourceError)):
                run.stats.connect_failures["refused"] += 1
            else:
                raise
        now = trio.current_time()
        give_up_at = give_up_at or now + cfg.reconnect_for
        if now >= give_up_at:
            run.stats.gave_up += 1
            return
        await trio.sleep(0.5)
    run.stats.gave_up += k < cfg.messages


async def rest_probe(run: Run, jwt: str, done: trio.Event) -> None:
    """List one user's keys every 0.25 s until ``done``; statuses (or ``hang``) counted."""
    async with httpx.AsyncClient(base_url=run.env.url, timeout=10) as http:
        while not done.is_set():
            with trio.move_on_after(5) as scope:
                try:
                    r = await http.get("/api/user/apikeys", headers={"Authorization": jwt})
                    run.stats.rest[str(r.status_code)] += 1
                except httpx.HTTPError as exc:
                    run.stats.rest[type(exc).__name__] += 1
            if scope.cancelled_caught:
                run.stats.rest["hang"] += 1
            await trio.sleep(0.25)
