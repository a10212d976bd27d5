"""The server's Prometheus metrics (prometheus-client): what is counted, and how a scrape reads
it across worker processes. ``GET /metrics`` (``web.metrics_endpoint``) serves ``render()``.

| metric | type | labels | counted |
|---|---|---|---|
| ``chat_sessions_live`` | gauge (livesum) | | session actors running |
| ``chat_sockets_open`` | gauge (livesum) | | chat WebSockets open (each attached to one session) |
| ``chat_answers_started_total`` | counter | | answers whose generation started |
| ``chat_answers_finished_total`` | counter | ``reason`` | answers ended, by how (``REASONS``) |
| ``chat_answer_first_delta_seconds`` | histogram | | answer start → its first delta pushed |
| ``chat_answer_duration_seconds`` | histogram | | answer start → its end (any reason) |
| ``chat_upstream_errors_total`` | counter | ``kind`` | failed upstream HTTP attempts, retried ones too |
| ``chat_storage_seconds`` | histogram | ``store``, ``op`` | one Redis crossing / one SQL unit of work |
| ``chat_limit_refusals_total`` | counter | ``limit`` | requests a limit refused (``LIMITS``) |
| ``chat_forwarded_messages_total`` | counter | | inputs a socket sent to a session owned by another process (through the session's inbox in Redis) |

plus the process basics: prometheus-client's default collectors in one process (``process_*``,
``python_gc_*``, ``python_info``); with several workers, ``python_info`` and the ``process_*``
gauges of each live worker, labelled ``pid`` (the default collectors read only the scraping
process, so each worker writes its own values instead, every ``PROCESS_EVERY`` samples).

Cost: every count is one prometheus-client call per answer, per socket event or per storage
unit, never per delta (~1 µs in one process, a few µs in multiprocess mode, where a value is a
write into a memory-mapped file). The two live gauges are not counted at events: each process
sets them from its registry and socket watch once per ``SAMPLE_SECONDS`` and at each scrape it
answers (``add_live_source``), so they cannot drift and cost nothing on the hot path.

Several workers (``hypercorn --workers N``): set ``METRICS_MULTIPROC_DIR`` (or prometheus'
own ``PROMETHEUS_MULTIPROC_DIR``) to a directory of this host that only this server uses.
Each worker then writes its values there (``core.metrics_dir`` keeps the directory true to
the live workers) and a scrape, whichever worker answers it, sums over all of them: counters
and histograms summed, live gauges summed over the live workers only. The mode is chosen once
per process by ``configure``, before any metric exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from core import metrics_dir
from core.errors import ConfigError

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=0.0.4; charset=utf-8

#: Time to first delta and answer duration: 10 ms … 60 s.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
#: One storage call: a Redis round trip is ~0.2-2 ms, a bound is 5 s (REDIS_TIMEOUT, ...).
STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)

#: How an answer ends (``chat_actors.chat_metrics.answer_reason``): its terminator (complete,
#: stopped by /stop, ended by /deletechatroom), or the error code that took its place.
REASONS = ("complete", "stopped", "room_deleted", "upstream_error", "upstream_timeout",
           "rate_limited", "content_filter", "session_stopped", "session_restarted",
           "storage_unavailable", "answer_not_saved")
#: Failed upstream attempts (``chat_actors.chat_metrics.upstream_error_kind``).
UPSTREAM_KINDS = ("status_429", "status_5xx", "status_4xx", "timeout", "connect_timeout",
                  "connection", "bad_stream", "incomplete")
#: Limit refusals, by the error code the client gets.
LIMITS = ("rate_limited", "too_many_answers", "budget_exceeded", "too_many_sockets",
          "too_many_attempts")

SAMPLE_SECONDS = 1.0
PROCESS_EVERY = 5  # samples between two readings of a worker's process basics

#: ``() -> (live sessions, open sockets)`` of one running app of this process.
LiveSource = Callable[[], tuple[int, int]]


class Metrics:
    """This process's metric objects; made once, by ``configure``."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        reg = REGISTRY if directory is None else None  # multiprocess: read from the files
        self.sessions = Gauge("chat_sessions_live", "Chat session actors running.",
                              multiprocess_mode="livesum", registry=reg)
        self.sockets = Gauge("chat_sockets_open",
                             "Chat WebSockets open, each attached to one session.",
                             multiprocess_mode="livesum", registry=reg)
        self.answers_started = Counter("chat_answers_started",
                                       "Answers whose generation started.", registry=reg)
        self.answers_finished = Counter(
            "chat_answers_finished", "Answers ended, by reason: complete, or what cut them.",
            ["reason"], registry=reg)
        self.first_delta = Histogram(
            "chat_answer_first_delta_seconds",
            "From an answer's start to its first text pushed to the sockets.",
            buckets=LATENCY_BUCKETS, registry=reg)
        self.answer_duration = Histogram(
            "chat_answer_duration_seconds", "From an answer's start to its end, any reason.",
            buckets=LATENCY_BUCKETS, registry=reg)
        self.upstream_errors = Counter(
            "chat_upstream_errors", "Failed upstream HTTP attempts (retried ones too), by kind.",
            ["kind"], registry=reg)
        self.storage = Histogram(
            "chat_storage_seconds",
            "One storage call as its caller waits for it: a Redis crossing (a batch of "
            "queued commands, a transaction, a script) or one SQL unit of work.",
            ["store", "op"], buckets=STORAGE_BUCKETS, registry=reg)
        self.limit_refusals = Counter("chat_limit_refusals", "Requests refused by a limit.",
                                      ["limit"], registry=reg)
        self.forwarded = Counter(
            "chat_forwarded_messages",
            "Inputs (messages, commands) a socket of this process sent to a session owned by "
            "another process, through the session's inbox in Redis.", registry=reg)
        # Every known series exists from the start, at 0; children are looked up once.
        self._finished = {reason: self.answers_finished.labels(reason) for reason in REASONS}
        self._upstream = {kind: self.upstream_errors.labels(kind) for kind in UPSTREAM_KINDS}
        self._limits = {limit: self.limit_refusals.labels(limit) for limit in LIMITS}
        self._storage: dict[tuple[str, str], Histogram] = {}
        self._process = ProcessCollector(registry=None)
        self._process_gauges: dict[str, Gauge] = {}
        self._samples = 0

    @staticmethod
    def _child(family: Counter, children: dict[str, Counter], label: str) -> Counter:
        child = children.get(label)
        if child is None:
            child = children[label] = family.labels(label)
        return child

    def finished(self, reason: str) -> Counter:
        return self._child(self.answers_finished, self._finished, reason)

    def upstream(self, kind: str) -> Counter:
        return self._child(self.upstream_errors, self._upstream, kind)

    def refused(self, limit: str) -> Counter:
        return self._child(self.limit_refusals, self._limits, limit)

    def storage_child(self, store: str, op: str) -> Histogram:
        child = self._storage.get((store, op))
        if child is None:
            child = self._storage[(store, op)] = self.storage.labels(store, op)
        return child

    def sample(self, sessions: int, sockets: int) -> None:
        self.sessions.set(sessions)
        self.sockets.set(sockets)
        if self.directory is not None:
            if self._samples % PROCESS_EVERY == 0:
                self.write_process_basics()
            self._samples += 1

    def write_process_basics(self) -> None:
        """Multiprocess mode: this worker's ``process_*`` values as ``liveall`` gauges (one
        series per live worker, labelled ``pid``)."""
        for family in self._process.collect():
            for sample in family.samples:
                gauge = self._process_gauges.get(sample.name)
                if gauge is None:
                    gauge = self._process_gauges[sample.name] = Gauge(
                        sample.name, family.documentation, multiprocess_mode="liveall",
                        registry=None)
                gauge.set(sample.value)


_current: Metrics | None = None
_sources: list[LiveSource] = []


def configure(directory: str | None = None) -> Metrics:
    """This process's metrics, in multiprocess mode when ``directory`` (else
    ``PROMETHEUS_MULTIPROC_DIR``) is set. Made at the first call; later calls must agree."""
    global _current
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    if directory is not None:
        directory = os.path.abspath(directory)
    if _current is not None:
        if _current.directory != directory:
            raise ConfigError(f"METRICS_MULTIPROC_DIR: this process's metrics already live in "
                              f"{_current.directory or 'memory'}, not {directory}")
        return _current
    if directory is not None:
        try:
            metrics_dir.claim(directory)
        except OSError as exc:
            raise ConfigError(f"METRICS_MULTIPROC_DIR: cannot use {directory}: {exc}") from None
        # prometheus-client picks its value class from this variable when it is imported; the
        # choice must only come before the first metric, which is made just below.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    _current = Metrics(directory)
    return _current


def current() -> Metrics:
    """The process's metrics (in one process, if nothing configured them yet)."""
    return _current if _current is not None else configure(None)


# ---------------------------------------------------------------- counting (the hot path)
def answer_started() -> None:
    current().answers_started.inc()


def answer_finished(reason: str, seconds: float) -> None:
    metrics = current()
    metrics.finished(reason).inc()
    metrics.answer_duration.observe(seconds)


def first_delta(seconds: float) -> None:
    current().first_delta.observe(seconds)


def upstream_error(kind: str) -> None:
    current().upstream(kind).inc()


def storage_call(store: str, op: str, seconds: float) -> None:
    current().storage_child(store, op).observe(seconds)


def limit_refused(limit: str) -> None:
    current().refused(limit).inc()


def message_forwarded() -> None:
    current().forwarded.inc()


# ---------------------------------------------------------------- live gauges, scrapes
def add_live_source(source: LiveSource) -> Callable[[], None]:
    """Count a running app's sessions and sockets in the live gauges; returns its removal."""
    _sources.append(source)

    def remove() -> None:
        if source in _sources:
            _sources.remove(source)

    return remove


def sample() -> None:
    """Set the live gauges (and, every ``PROCESS_EVERY`` calls in multiprocess mode, the
    process basics) from this process's running apps. Call it on the apps' Trio thread."""
    metrics = current()
    sessions = sockets = 0
    for source in _sources:
        live_sessions, open_sockets = source()
        sessions += live_sessions
        sockets += open_sockets
    metrics.sample(sessions, sockets)


def render() -> bytes:
    """The text exposition of every process's metrics (``CONTENT_TYPE``). Thread-safe: run it
    off the event loop, after ``sample()`` on it."""
    metrics = current()
    if metrics.directory is None:
        return generate_latest(REGISTRY)
    metrics_dir.reap(metrics.directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics.directory)  # type: ignore[no-untyped-call]
    PlatformCollector(registry=registry)
    return generate_latest(registry)


def release() -> None:
    """This process stops serving: in multiprocess mode its live gauges stop counting."""
    if _current is not None and _current.directory is not None:
        metrics_dir.release(_current.directory)
