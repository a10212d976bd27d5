"""Chaos run: chat sessions under load while one fault strikes; then every acknowledged answer is
looked up in Redis. A benchmark-style script (not a test), loopback only:

    python -m scripts.chaos --fault all            # each fault in turn, ~40 s each
    python -m scripts.chaos --fault sigterm --sessions 40 --messages 10

It starts what it needs itself, fresh for each fault (``scripts.chaos_env``): a private
redis-server (append-only file, fsync on every write), a private mariadbd (or, with
``--shared-mariadb``, a fresh database on the MariaDB at 127.0.0.1:3306), the mock upstream at
``--delay-ms`` (20) per token and the server as a real process (``python -m scripts.serve``).
It creates ``--users`` users with a key each over REST, then runs ``--sessions`` WebSocket
sessions (one room each) of ``--messages`` messages with the load test's client
(``scripts.chaos_sessions`` around ``scripts.loadtest_client`` and ``scripts.loadtest_verify``:
connect, read answers, check the mock's exact answer). A session whose socket closes reconnects
(within ``--reconnect-for`` s) and goes on with its next message: a message is never sent twice. The faults (``--fault-at`` s after the
ramp-up, ``--down`` s of outage):

- ``redis-kill``: kill -9 Redis mid-load, start it again ``--down`` s later;
- ``redis-idle-kill``: every session connected and idle, kill -9 Redis, start it again, and
  1 s after the restart every session sends its first message;
- ``mariadb-restart``: stop MariaDB (SIGTERM), start it again ``--down`` s later, while a REST
  probe lists a user's keys every 0.25 s (its statuses are in the notes);
- ``sigterm``: SIGTERM the server mid-answer (it drains), start it again at once;
- ``upstream-kill``: kill -9 the mock upstream, start it again ``--down`` s later.

Afterwards (``--settle`` s later, the server still running) it reads every session's history
straight from Redis and prints one row per fault (``scripts.chaos_report``): messages sent,
answers acknowledged (terminator seen), of those lost (not in the history) and duplicated
(stored twice), answers the client saw with the wrong text, answers ended by an error frame
(by code) or by a close / timeout, sockets closed by the server (by close code). The last line
is ``CHAOS: OK`` (exit 0) when no acknowledged answer was lost, duplicated or wrong in any run,
else ``CHAOS: FAIL`` (exit 1); a run that could not be set up is exit 2. Every wait is
bounded: the load and fault phase by ``--duration``, reconnects, answers, process start-ups and
stops by their own timeouts.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import httpx
import redis
import trio

from scripts.chaos_env import ChaosEnv, http_ok
from scripts.chaos_report import HEADER, Audit, FaultStats, audit, format_row
from scripts.chaos_sessions import ChaosConfig, Run, rest_probe, session
from scripts.loadtest import raise_open_files_limit
from scripts.loadtest_client import PASSWORD, provision_users
from scripts.loadtest_verify import MessagePlan
from storage.context_store import StoredMessage

FAULTS = ("redis-kill", "redis-idle-kill", "mariadb-restart", "sigterm", "upstream-kill")


async def inject(run: Run, fault: str, nursery: trio.Nursery, jwt: str) -> None:
    cfg, env, notes = run.cfg, run.env, run.stats.notes
    if fault == "redis-idle-kill":
        assert run.gate is not None
        with trio.move_on_after(60):
            while run.opened < cfg.sessions:
                await trio.sleep(0.1)
        await trio.sleep(1.0)  # every socket has its init frame; nothing is in flight
        env.redis.kill()
        await trio.sleep(cfg.down)
        await env.redis.start()
        await trio.sleep(1.0)
        run.gate.set()
        notes.append(f"{run.opened} idle sessions; Redis down {cfg.down:g} s")
        return
    await trio.sleep_until(run.rec.started + cfg.ramp_up + cfg.fault_at)
    start = trio.current_time()
    if fault == "redis-kill":
        env.redis.kill()
        await trio.sleep(cfg.down)
        await env.redis.start()
        notes.append(f"Redis down {trio.current_time() - start:.1f} s")
    elif fault == "upstream-kill":
        env.mock.kill()
        await trio.sleep(cfg.down)
        await env.mock.start()
        notes.append(f"upstream down {trio.current_time() - start:.1f} s")
    elif fault == "mariadb-restart":
        assert env.mariadb is not None
        done = trio.Event()
        nursery.start_soon(rest_probe, run, jwt, done)
        status = await env.mariadb.stop()
        await trio.sleep(cfg.down)
        await env.mariadb.start()
        back = trio.current_time()
        with trio.move_on_after(30):
            while not await http_ok(f"{env.url}/health/ready"):
                await trio.sleep(0.1)
        notes.append(f"MariaDB stopped (exit {status}) and down {back - start:.1f} s, "
                     f"server ready {trio.current_time() - back:.1f} s after")
        await trio.sleep(1.0)
        done.set()
    elif fault == "sigterm":
        status = await env.server.stop(timeout=30)
        stopped = trio.current_time()
        drained = [line.split("draining: ", 1)[1] for line in env.server.tail(200).splitlines()
                   if "draining: " in line]
        await env.start_server()
        notes.append(f"SIGTERM: {drained[-1] if drained else 'no drain line'}; exit {status} "
                     f"after {stopped - start:.1f} s, serving again "
                     f"{trio.current_time() - stopped:.1f} s later")


def read_histories(redis_url: str, prefix: str, run_id: str, notes: list[str]
                   ) -> dict[int, list[StoredMessage]]:
    """Every session's stored messages, straight from Redis (the documented layout)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    histories: dict[int, list[StoredMessage]] = {}
    unreadable = miscounted = 0
    try:
        for key in client.scan_iter(match=f"{prefix}ctx:*:lt-{run_id}-*:messages", count=1000):
            session_no = int(key[: -len(":messages")].rsplit("-", 1)[1])
            messages = []
            for raw in client.lrange(key, 0, -1):
                try:
                    messages.append(StoredMessage.from_json(str(raw)))
                except (ValueError, KeyError, TypeError):
                    unreadable += 1
            count = client.hget(key[: -len("messages")] + "meta", "count")
            miscounted += count is not None and int(count) != len(messages)
            histories[session_no] = messages
    finally:
        client.close()
    if unreadable or miscounted:
        notes.append(f"{unreadable} unreadable item(s), {miscounted} list(s) not matching count")
    return histories


async def login(url: str, email: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.post("/api/auth/login/email", json={"email": email, "password": PASSWORD})
        r.raise_for_status()
        return str(r.json()["Authorization"])


async def run_fault(fault: str, cfg: ChaosConfig, workdir: Path) -> tuple[Audit, FaultStats]:
    env = ChaosEnv(workdir / fault, delay_ms=cfg.delay_ms, shared_mariadb=cfg.shared_mariadb,
                   shutdown_grace=cfg.shutdown_grace)
    try:
        await env.start()
        users = await provision_users(env.url, cfg.users, prefix="chaos")
        jwt = await login(env.url, users[0].email) if fault == "mariadb-restart" else ""
        plan = MessagePlan(run_id=secrets.token_hex(3), tokens=cfg.tokens,
                           default_tokens=env.mock_tokens)
        run = Run(cfg=cfg, env=env, plan=plan,
                  gate=trio.Event() if fault == "redis-idle-kill" else None)
        run.rec.started = trio.current_time()
        with trio.move_on_after(cfg.duration) as cap:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(inject, run, fault, nursery, jwt)
                for i in range(cfg.sessions):
                    await trio.sleep_until(run.rec.started + cfg.ramp_up * i / cfg.sessions)
                    nursery.start_soon(session, run, i, users[i % len(users)])
        if cap.cancelled_caught:
            run.stats.notes.append(f"stopped by the {cfg.duration:g} s cap")
        if run.stats.resent:
            run.stats.notes.append(f"{run.stats.resent} message(s) sent again on a new socket "
                                   f"(the old one closed before they left)")
        await trio.sleep(cfg.settle)  # writes kept while Redis was down go back meanwhile
        histories = await trio.to_thread.run_sync(
            read_histories, env.redis_url, env.prefix, plan.run_id, run.stats.notes)
        return audit(run.outcomes, histories), run.stats
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(60):
            await env.close()


async def run_all(faults: Sequence[str], cfg: ChaosConfig, workdir: Path,
                  results: dict[str, dict[str, object]]) -> int:
    print(HEADER, flush=True)
    status = 0
    for fault in faults:
        try:
            result, stats = await run_fault(fault, cfg, workdir)
        except Exception as exc:  # noqa: BLE001 (one broken run must not hide the others)
            print(f"{fault:<16} could not run: {type(exc).__name__}: {exc}"[:2000], flush=True)
            results[fault] = {"error": str(exc)}
            status = max(status, 2)
            continue
        print(format_row(fault, result, stats), flush=True)
        if result.acknowledged == 0:  # nothing measured: the run itself failed
            print(f"{fault:<16} acknowledged no answer at all: the run measured nothing "
                  f"(--workdir keeps the logs)", flush=True)
            status = max(status, 2)
        for line in (*result.lost_examples, *result.duplicated_examples):
            print(f"    {line}", flush=True)
        results[fault] = {"sent": result.sent, "acknowledged": result.acknowledged,
                          "lost": result.lost, "duplicated": result.duplicated,
                          "wrong": result.wrong, "errors": dict(result.errors),
                          "lost_examples": result.lost_examples,
                          "duplicated_examples": result.duplicated_examples,
                          "closes": dict(stats.closes),
                          "connect_failures": dict(stats.connect_failures),
                          "rest": dict(stats.rest), "notes": stats.notes,
                          "gave_up": stats.gave_up,
                          "ok": result.ok and result.acknowledged > 0}
        if not result.ok:
            status = max(status, 1)
    return status


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ChaosConfig()
    p.add_argument("--fault", choices=[*FAULTS, "all"], default="all")
    p.add_argument("--sessions", type=int, default=d.sessions)
    p.add_argument("--users", type=int, default=d.users, help="users (a key each) to share")
    p.add_argument("--messages", type=int, default=d.messages, help="per session")
    p.add_argument("--think", type=float, default=d.think, help="seconds between messages")
    p.add_argument("--ramp-up", type=float, default=d.ramp_up)
    p.add_argument("--fault-at", type=float, default=d.fault_at, help="s after the ramp-up")
    p.add_argument("--down", type=float, default=d.down, help="seconds of outage")
    p.add_argument("--delay-ms", type=float, default=d.delay_ms, help="mock upstream, per token")
    p.add_argument("--tokens", type=int, help="answer length ([mock tokens=N] marker)")
    p.add_argument("--duration", type=float, default=d.duration,
                   help="cap on the load and fault phase of one run, seconds")
    p.add_argument("--answer-timeout", type=float, default=d.answer_timeout)
    p.add_argument("--reconnect-for", type=float, default=d.reconnect_for)
    p.add_argument("--settle", type=float, default=d.settle)
    p.add_argument("--shutdown-grace", type=float, default=d.shutdown_grace,
                   help="the server's SHUTDOWN_GRACE_SECONDS (short: SIGTERM cuts answers)")
    p.add_argument("--shared-mariadb", action="store_true",
                   help="a fresh database on 127.0.0.1:3306 instead of a private mariadbd "
                   "(not with mariadb-restart)")
    p.add_argument("--workdir", type=Path, help="keep the processes' logs here")
    p.add_argument("--json", type=Path, help="write the numbers as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    faults = list(FAULTS) if args.fault == "all" else [args.fault]
    if args.shared_mariadb and "mariadb-restart" in faults:
        print("error: mariadb-restart needs the private mariadbd (the shared one is never "
              "restarted)", file=sys.stderr)
        return 2
    cfg = ChaosConfig(
        sessions=args.sessions, users=max(1, min(args.users, args.sessions)),
        messages=args.messages, think=args.think, ramp_up=args.ramp_up, fault_at=args.fault_at,
        down=args.down, delay_ms=args.delay_ms, tokens=args.tokens, duration=args.duration,
        answer_timeout=args.answer_timeout, reconnect_for=args.reconnect_for,
        settle=args.settle, shutdown_grace=args.shutdown_grace,
        shared_mariadb=args.shared_mariadb)
    raise_open_files_limit(cfg.sessions * 4 + 256)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        workdir = args.workdir or Path(tmp)
        status = trio.run(run_all, faults, cfg, workdir, results)
    if args.json:
        args.json.write_text(json.dumps({"config": asdict(cfg), "faults": results}, indent=1,
                                        default=str))
    bad = [f for f, r in results.items() if not r.get("ok")]
    if status == 0:
        print(f"CHAOS: OK ({len(faults)} fault run(s); no acknowledged answer lost, duplicated "
              f"or wrong)")
    else:
        print(f"CHAOS: FAIL ({', '.join(bad)})")
    return status


if __name__ == "__main__":
    sys.exit(main())
