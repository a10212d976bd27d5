"""The load test's numbers: per-message records, percentiles, the end summary, a time series.

Pure code (no I/O, no clock): the client fills a ``Recorder`` with ``MessageResult``s and
session events; ``summarize`` turns it into a ``Summary`` (what the table and ``--json`` show),
``timeline`` into per-bucket rows (what ``--plot`` draws). Times are seconds from the run's start.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: A load generator is one address whose users each carry many sessions: the server's abuse
#: limits would refuse it (they are per user and per address), so a load test runs with them off.
LIMITS_HINT = ("run the server under test with REGISTRATIONS_PER_IP=0 CHAT_MESSAGES_PER_MINUTE=0 "
               "CHAT_ANSWERS_AT_ONCE=0 WS_CONNECTIONS_PER_KEY=0 (--users-file reuses users "
               "instead of registering them)")
LIMIT_CODES = {"rate_limited", "too_many_answers", "budget_exceeded", "too_many_sockets"}

PERCENTILES = (50.0, 95.0, 99.0)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default); NaN for no values. ``values`` need not be sorted."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


@dataclass(frozen=True)
class Distribution:
    """p50 / p95 / p99 / max (and count, mean) of one metric; NaN when there are no values."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        ordered = sorted(values)
        p50, p95, p99 = (percentile(ordered, q) for q in PERCENTILES)
        return cls(len(ordered), sum(ordered) / len(ordered), p50, p95, p99, ordered[-1])


@dataclass
class MessageResult:
    """One chat message: sent, then read up to its terminator (or error, close, timeout)."""

    session: int
    index: int
    sent_at: float
    ttft: float | None = None  # send -> first delta (finish: false)
    total: float | None = None  # send -> terminator (or the error frame that ended it)
    gaps: list[float] = field(default_factory=list)  # between consecutive deltas
    frames: int = 0  # frames read for this answer (deltas + the last frame)
    deltas: int = 0
    bytes: int = 0  # UTF-8 payload bytes of those frames
    error: str | None = None  # error.code, or "closed" / "timeout" / "cancelled"
    mismatch: str | None = None  # None = verified equal (or not verified); see verify

    def delta_at(self, now: float, sent: float, last: float) -> None:
        """A delta arrived at ``now``: the first one sets TTFT, later ones add a gap."""
        if self.ttft is None:
            self.ttft = now - sent
        else:
            self.gaps.append(now - last)
        self.deltas += 1


@dataclass
class Recorder:
    """Everything measured in one run; appended to by the session tasks (one Trio thread)."""

    started: float = 0.0  # absolute clock value of time 0
    messages: list[MessageResult] = field(default_factory=list)
    connect_times: list[float] = field(default_factory=list)  # TCP + upgrade
    init_times: list[float] = field(default_factory=list)  # upgrade done -> init frame
    session_errors: Counter[str] = field(default_factory=Counter)  # connect failures etc.
    unexpected_closes: int = 0
    delta_times: list[float] = field(default_factory=list)  # arrival of every delta
    sessions_open: int = 0
    peak_open: int = 0  # most sessions open at the same time
    sessions_done: int = 0
    answers_done: int = 0  # for the progress bar
    failures: int = 0  # for the progress bar
    verified: bool = True

    def session_opened(self) -> None:
        self.sessions_open += 1
        self.peak_open = max(self.peak_open, self.sessions_open)

    def record_delta(self, at: float) -> None:
        self.delta_times.append(at)


@dataclass(frozen=True)
class Summary:
    sessions: int
    messages_planned: int
    messages_sent: int
    answers_complete: int  # ended with a terminator, no error frame
    duration: float
    messages_per_s: float
    deltas_per_s: float
    bytes_per_s: float
    connect_ms: Distribution
    init_ms: Distribution
    ttft_ms: Distribution
    gap_ms: Distribution
    total_ms: Distribution
    frames_per_answer: Distribution
    bytes_per_answer: Distribution
    errors: dict[str, int]
    unexpected_closes: int
    mismatches: dict[str, int]
    verified: bool
    message_errors: int = 0  # messages that ended with an error (part of ``errors``)
    peak_open: int = 0  # most sessions open at the same time

    @property
    def unanswered(self) -> int:
        """Planned messages that got no complete answer and no error (never sent, or cut by
        the --duration cap): a run is only complete when this is 0."""
        return max(0, self.messages_planned - self.answers_complete - self.message_errors)

    @property
    def failures(self) -> int:
        """Errors + unexpected closes + mismatches: 0 for a clean run. A close in the middle of
        an answer is one failure, though it is both that message's error and a close."""
        closes_between_answers = self.unexpected_closes - self.errors.get("closed", 0)
        return (sum(self.errors.values()) + max(0, closes_between_answers)
                + sum(self.mismatches.values()))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = self.failures
        data["unanswered"] = self.unanswered
        clean: dict[str, Any] = nan_to_none(data)
        return clean


def nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    return value


def _ms(values: Iterable[float | None]) -> list[float]:
    return [v * 1000.0 for v in values if v is not None]


def summarize(rec: Recorder, *, sessions: int, messages_planned: int, duration: float) -> Summary:
    msgs = rec.messages
    errors: Counter[str] = Counter(rec.session_errors)
    errors.update(m.error for m in msgs if m.error is not None and m.error != "cancelled")
    done = [m for m in msgs if m.total is not None and m.error is None]
    deltas = sum(m.deltas for m in msgs)
    received = sum(m.bytes for m in msgs)
    span = duration if duration > 0 else math.nan
    return Summary(
        sessions=sessions,
        messages_planned=messages_planned,
        messages_sent=len(msgs),
        answers_complete=len(done),
        duration=duration,
        messages_per_s=len(done) / span,
        deltas_per_s=deltas / span,
        bytes_per_s=received / span,
        connect_ms=Distribution.of(_ms(rec.connect_times)),
        init_ms=Distribution.of(_ms(rec.init_times)),
        ttft_ms=Distribution.of(_ms(m.ttft for m in msgs)),
        gap_ms=Distribution.of(_ms(g for m in msgs for g in m.gaps)),
        total_ms=Distribution.of(_ms(m.total for m in done)),
        frames_per_answer=Distribution.of([float(m.frames) for m in done]),
        bytes_per_answer=Distribution.of([float(m.bytes) for m in done]),
        errors=dict(sorted(errors.items())),
        unexpected_closes=rec.unexpected_closes,
        mismatches=dict(sorted(Counter(m.mismatch for m in msgs if m.mismatch).items())),
        verified=rec.verified,
        message_errors=sum(1 for m in msgs if m.error is not None and m.error != "cancelled"),
        peak_open=rec.peak_open,
    )


@dataclass(frozen=True)
class Bucket:
    """One time slice of the run: throughput and the latency of answers whose first delta
    arrived in it."""

    start: float
    width: float
    messages_per_s: float  # answers completed in the slice
    deltas_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    ttft_p99_ms: float


def timeline(rec: Recorder, duration: float, *, buckets: int = 60,
             min_width: float = 1.0) -> list[Bucket]:
    """The run cut into at most ``buckets`` slices of at least ``min_width`` seconds."""
    if duration <= 0:
        return []
    width = max(min_width, duration / buckets)
    n = max(1, math.ceil(duration / width))
    done = [0] * n
    deltas = [0] * n
    ttfts: list[list[float]] = [[] for _ in range(n)]

    def slot(t: float) -> int:
        return min(n - 1, max(0, int(t // width)))

    for t in rec.delta_times:
        deltas[slot(t)] += 1
    for m in rec.messages:
        if m.total is not None and m.error is None:
            done[slot(m.sent_at + m.total)] += 1
        if m.ttft is not None:
            ttfts[slot(m.sent_at + m.ttft)].append(m.ttft * 1000.0)
    rows = []
    for i in range(n):
        # the last slice may be shorter than the others
        w = min(width, duration - i * width) if i == n - 1 else width
        w = w if w > 0 else width
        rows.append(Bucket(
            start=i * width, width=w, messages_per_s=done[i] / w, deltas_per_s=deltas[i] / w,
            ttft_p50_ms=percentile(ttfts[i], 50), ttft_p95_ms=percentile(ttfts[i], 95),
            ttft_p99_ms=percentile(ttfts[i], 99),
        ))
    return rows


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def format_table(s: Summary) -> str:
    """The end-of-run report: one row per metric, then throughput and errors."""
    lines = [f"{'metric':<20}{'count':>9}{'p50':>11}{'p95':>11}{'p99':>11}{'max':>11}"]
    rows: list[tuple[str, Distribution, int]] = [
        ("connect (ms)", s.connect_ms, 1), ("init frame (ms)", s.init_ms, 1),
        ("first delta (ms)", s.ttft_ms, 1), ("delta gap (ms)", s.gap_ms, 1),
        ("answer total (ms)", s.total_ms, 1), ("frames / answer", s.frames_per_answer, 0),
        ("bytes / answer", s.bytes_per_answer, 0),
    ]
    for name, d, digits in rows:
        lines.append(f"{name:<20}{d.count:>9,}" + "".join(
            f"{_fmt(v, digits):>11}" for v in (d.p50, d.p95, d.p99, d.max)))
    lines.append("")
    lines.append(
        f"sessions {s.sessions:,} (at most {s.peak_open:,} open at once)   "
        f"messages {s.answers_complete:,} answered / "
        f"{s.messages_sent:,} sent / {s.messages_planned:,} planned   in {s.duration:.1f} s")
    lines.append(
        f"throughput {_fmt(s.messages_per_s, 1)} messages/s, {_fmt(s.deltas_per_s, 0)} deltas/s, "
        f"{_fmt(s.bytes_per_s / 1024, 0)} KiB/s")
    errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "none"
    mismatches = ", ".join(f"{k}: {v}" for k, v in s.mismatches.items()) or "none"
    lines.append(f"errors: {errors}   unexpected closes: {s.unexpected_closes}")
    if LIMIT_CODES & set(s.errors):
        lines.append("the server's per-user limits refused messages: " + LIMITS_HINT)
    lines.append(f"answers differing from the upstream's: "
                 f"{mismatches if s.verified else 'not checked (--no-verify)'}")
    if s.unanswered:
        lines.append(f"unanswered: {s.unanswered:,} planned messages got no answer "
                     f"(sessions that never connected, or cut by --duration)")
    verdict = "OK" if s.failures == 0 else f"{s.failures} FAILURES"
    lines.append("RESULT: " + verdict + (", INCOMPLETE" if s.unanswered else ""))
    return "\n".join(lines)
