"""Load-test a chat server over its WebSocket API, checking every answer.

    python -m scripts.loadtest --url http://127.0.0.1:8000 --sessions 200 --messages 5 \\
        --ramp-up 5 --think 1 --json out.json --plot out.png

Creates ``--users`` users with an API key each over REST (or reads them from ``--users-file``,
a JSON list of ``{"access_key": ...}``), opens ``--sessions`` WebSocket sessions (one chat
room each) spread evenly over ``--ramp-up`` seconds, sends ``--messages`` messages per session
with ``--think`` seconds between an answer's end and the next message, and reads every
streamed answer to its terminator. Stops by itself after ``--duration`` seconds at most.

Against the mock upstream (``python -m scripts.mock_upstream``) every answer is checked whole
against the mock's deterministic answer (nothing lost, nothing duplicated); ``--tokens`` /
``--delay-ms`` put a ``[mock ...]`` marker in each message to shape the answers. Against a real
upstream pass ``--no-verify``. Exit status: 0 when every planned message was answered with no error, close or
mismatch.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import secrets
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

from scripts.loadtest_client import (
    Credentials,
    LoadConfig,
    load_users,
    provision_users,
    run_load,
    save_users,
)
from scripts.loadtest_stats import (
    Bucket,
    Recorder,
    Summary,
    format_table,
    nan_to_none,
    summarize,
    timeline,
)
from scripts.loadtest_verify import MessagePlan

__all__ = ["LoadResult", "loadtest", "main", "raise_open_files_limit"]


@dataclass(frozen=True)
class LoadResult:
    summary: Summary
    timeline: list[Bucket]
    recorder: Recorder


def raise_open_files_limit(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class ProgressBar:
    """One line on stderr, redrawn in place on a terminal, every 10 s otherwise."""

    def __init__(self, rec: Recorder, planned: int, sessions: int, duration: float,
                 enabled: bool = True) -> None:
        self.rec, self.planned, self.sessions, self.duration = rec, planned, sessions, duration
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last_line = -math.inf

    def __call__(self, elapsed: float) -> None:
        if not self.enabled or (not self.tty and elapsed - self.last_line < 10):
            return
        self.last_line = elapsed
        rec = self.rec
        done = rec.answers_done / self.planned if self.planned else 1.0
        bar = "#" * int(done * 30)
        line = (f"[{bar:<30}] {rec.answers_done:,}/{self.planned:,} answers  "
                f"open {rec.sessions_open:,}/{self.sessions:,}  failures {rec.failures:,}  "
                f"{elapsed:5.1f}/{self.duration:g} s")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


async def loadtest(cfg: LoadConfig, plan: MessagePlan, users: Sequence[Credentials], *,
                   duration: float, progress: bool = False) -> LoadResult:
    """Run one load test against ``cfg.url`` with these users; the library entry point."""
    rec = Recorder()
    bar = ProgressBar(rec, cfg.sessions * cfg.messages, cfg.sessions, duration, progress)
    elapsed = await run_load(cfg, users, plan, rec, duration=duration, on_tick=bar)
    bar(elapsed)
    bar.finish()
    summary = summarize(rec, sessions=cfg.sessions, messages_planned=cfg.sessions * cfg.messages,
                        duration=elapsed)
    return LoadResult(summary=summary, timeline=timeline(rec, elapsed), recorder=rec)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the chat server's base URL")
    p.add_argument("--sessions", type=int, default=10, help="concurrent WebSocket sessions")
    p.add_argument("--messages", type=int, default=5, help="messages per session")
    p.add_argument("--ramp-up", type=float, default=0.0, help="seconds to start all sessions")
    p.add_argument("--steady", action="store_true", help="connect every session during the "
                   "ramp-up, then start chatting, each session at a random point of one think "
                   "time: the steady state of N open sessions, without the connection storm")
    p.add_argument("--think", type=float, default=0.5,
                   help="seconds between an answer and the next message (default 0.5)")
    p.add_argument("--users", type=int, default=None,
                   help="users to create (default: min(sessions, 20)); sessions share them")
    p.add_argument("--users-file", type=Path, help="take users/keys from this JSON file")
    p.add_argument("--save-users", type=Path, help="write the created users/keys here")
    p.add_argument("--tokens", type=int, help="answer length, as a [mock tokens=N] marker")
    p.add_argument("--delay-ms", type=float, help="ms per token, as a [mock delay_ms=D] marker")
    p.add_argument("--mock-tokens", type=int, default=64,
                   help="the mock upstream's default answer length (to verify; default 64)")
    p.add_argument("--no-verify", action="store_true", help="do not check answers (real upstream)")
    p.add_argument("--duration", type=float, default=300.0, help="hard cap on the run, seconds")
    p.add_argument("--answer-timeout", type=float, default=60.0, help="seconds per answer")
    p.add_argument("--json", type=Path, help="write the summary and time series as JSON")
    p.add_argument("--plot", type=Path, help="draw latency percentiles and throughput (PNG)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


async def _main(args: argparse.Namespace) -> LoadResult:
    if args.users_file:
        users = load_users(args.users_file)
    else:
        count = args.users or min(args.sessions, 20)
        print(f"creating {count} users with an API key each on {args.url} ...", file=sys.stderr)
        users = await provision_users(args.url, count)
        if args.save_users:
            save_users(args.save_users, users)
    cfg = LoadConfig(url=args.url, sessions=args.sessions, messages=args.messages,
                     ramp_up=args.ramp_up, steady=args.steady, think=args.think,
                     answer_timeout=args.answer_timeout, verify=not args.no_verify)
    plan = MessagePlan(run_id=secrets.token_hex(3), tokens=args.tokens, delay_ms=args.delay_ms,
                       default_tokens=args.mock_tokens)
    return await loadtest(cfg, plan, users, duration=args.duration, progress=not args.quiet)


def write_json(path: Path, result: LoadResult, extra: dict[str, object] | None = None) -> None:
    data = {**(extra or {}), "summary": result.summary.to_json(),
            "timeline": [nan_to_none(asdict(b)) for b in result.timeline]}
    path.write_text(json.dumps(data, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    raise_open_files_limit(args.sessions * 2 + 256)
    result = trio.run(_main, args)
    print(format_table(result.summary))
    if args.json:
        write_json(args.json, result, {"args": {k: str(v) if isinstance(v, Path) else v
                                                for k, v in vars(args).items()}})
    if args.plot:
        from scripts.loadtest_plot import plot_timeline

        plot_timeline(result.timeline, args.plot,
                      title=f"{args.sessions} sessions x {args.messages} messages")
    return 0 if result.summary.failures == 0 and result.summary.unanswered == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
