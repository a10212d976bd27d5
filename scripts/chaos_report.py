"""What a chaos run saw, checked against what Redis holds afterwards; one table row per fault.

Pure code (no I/O): the session tasks of ``scripts.chaos`` append an ``Outcome`` per message;
``audit`` compares them with each session's stored history (the messages list read back from
Redis) and ``format_row`` prints the result.

- **acknowledged**: the client saw the answer's terminator (no error frame). The server sends
  it only once the answer is stored (or kept to be written back), so every acknowledged answer
  must be in the history, right after its question, with the text the client saw.
- **lost**: acknowledged, but its question or its answer with that text is not in the history.
- **duplicated**: stored more than once: a question twice, a message id twice, or two answers
  to one question (each extra copy counts once). Every message text of a run is unique.
- **wrong**: acknowledged with a text that differs from the mock upstream's (the load test's
  check: a delta lost, repeated or corrupted on the way).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from storage.context_store import StoredMessage

ACK = "ack"  # the terminator came
ERROR = "error"  # an error frame ended the answer (``code``)
CLOSED = "closed"  # the socket closed before the answer ended
TIMEOUT = "timeout"  # nothing ended it within the answer timeout
CANCELLED = "cancelled"  # the run's time cap


@dataclass
class Outcome:
    """One message that went out, and how its answer ended."""

    session: int
    index: int
    text: str
    status: str = CANCELLED
    code: str | None = None  # the error frame's code
    received: str = ""
    wrong: bool = False  # acknowledged, but not the mock's text


@dataclass
class FaultStats:
    """Everything one fault run counted besides the outcomes."""

    closes: Counter[str] = field(default_factory=Counter)  # WebSocket close code
    connect_failures: Counter[str] = field(default_factory=Counter)  # rejected_503, refused, ...
    rest: Counter[str] = field(default_factory=Counter)  # REST probe: HTTP status (or "hang")
    notes: list[str] = field(default_factory=list)
    gave_up: int = 0  # sessions that could not reconnect within the bound
    resent: int = 0  # frames that met a closed socket (never left), sent on the next one


@dataclass(frozen=True)
class Audit:
    sent: int
    acknowledged: int
    lost: int
    duplicated: int
    wrong: int
    errors: Counter[str]
    lost_examples: tuple[str, ...] = ()
    duplicated_examples: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong)


def _answers_by_question(history: Sequence[StoredMessage]) -> dict[str, list[StoredMessage]]:
    """Each user message's text → the assistant messages after it, up to the next user one."""
    replies: dict[str, list[StoredMessage]] = {}
    current: list[StoredMessage] | None = None
    for message in history:
        if message.role == "user":
            current = replies.setdefault(message.content, [])
        elif message.role == "assistant" and current is not None:
            current.append(message)
    return replies


def duplicates(history: Sequence[StoredMessage]) -> list[str]:
    """One line per extra copy stored in one session's history."""
    found = []
    questions = Counter(m.content for m in history if m.role == "user")
    found += [f"question stored {n}x: {text[:60]!r}" for text, n in questions.items()
              for _ in range(n - 1)]
    ids = Counter(m.id for m in history)
    found += [f"message id {i} stored {n}x" for i, n in ids.items() for _ in range(n - 1)]
    for text, answers in _answers_by_question(history).items():
        found += [f"{len(answers)} answers to {text[:60]!r}"] * (len(answers) - 1)
    return found


def audit(outcomes: Iterable[Outcome], histories: Mapping[int, Sequence[StoredMessage]]
          ) -> Audit:
    """``histories``: session number → its stored messages (a session with none: absent)."""
    outcomes = list(outcomes)
    lost: list[str] = []
    duplicated: list[str] = []
    replies = {i: _answers_by_question(h) for i, h in histories.items()}
    for i, history in histories.items():
        duplicated += [f"session {i}: {line}" for line in duplicates(history)]
    for o in outcomes:
        if o.status != ACK:
            continue
        answers = replies.get(o.session, {}).get(o.text)
        if answers is None:
            lost.append(f"session {o.session} message {o.index}: question not stored")
        elif not any(a.content == o.received for a in answers):
            lost.append(f"session {o.session} message {o.index}: answer not stored "
                        f"({len(answers)} other answer(s))")
    return Audit(
        sent=len(outcomes),
        acknowledged=sum(o.status == ACK for o in outcomes),
        lost=len(lost), duplicated=len(duplicated),
        wrong=sum(o.status == ACK and o.wrong for o in outcomes),
        errors=Counter(o.code or "?" for o in outcomes if o.status == ERROR)
        + Counter(o.status for o in outcomes if o.status in (CLOSED, TIMEOUT)),
        lost_examples=tuple(lost[:5]), duplicated_examples=tuple(duplicated[:5]),
    )


def _counts(counter: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "-"


HEADER = (f"{'fault':<16} {'sent':>5} {'acked':>5} {'lost':>4} {'dup':>4} {'wrong':>5}  "
          f"{'answers ended by (code=n)':<46} {'sockets closed (code=n)':<24} notes")


def format_row(fault: str, result: Audit, stats: FaultStats) -> str:
    notes = list(stats.notes)
    if stats.connect_failures:
        notes.append(f"connect failures {_counts(stats.connect_failures)}")
    if stats.rest:
        notes.append(f"REST {_counts(stats.rest)}")
    if stats.gave_up:
        notes.append(f"{stats.gave_up} session(s) gave up reconnecting")
    return (f"{fault:<16} {result.sent:>5} {result.acknowledged:>5} {result.lost:>4} "
            f"{result.duplicated:>4} {result.wrong:>5}  {_counts(result.errors):<46} "
            f"{_counts(stats.closes):<24} {'; '.join(notes)}")
