"""What the load test sends, and whether an answer is exactly what the mock upstream sent.

The mock's answers are deterministic (``scripts.mock_upstream_answers``): the answer to a chat
message depends only on the last user message and the token count (a ``[mock tokens=N]`` marker
in the message wins over the mock's default). So every streamed answer can be checked whole:
the concatenation of its deltas must equal ``expected_answer``. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from scripts.mock_upstream_answers import expected_answer

LOST = "lost"  # text missing (a prefix arrived, or less text than sent)
DUPLICATED = "duplicated"  # more text than sent (a delta delivered twice)
CORRUPTED = "corrupted"  # as much text as sent, but different


@dataclass(frozen=True)
class MessagePlan:
    """How the messages of a run look; the same plan builds the text and its expected answer."""

    run_id: str
    tokens: int | None = None  # marker tokens=N (None: the upstream's default)
    delay_ms: float | None = None  # marker delay_ms=D (None: the upstream's default)
    default_tokens: int = 64  # the mock's default, used to verify when tokens is None
    padding: int = 0  # extra characters per message (bigger prompts)

    def text(self, session: int, index: int) -> str:
        """A message unique to (run, session, index), so every answer differs."""
        knobs = []
        if self.tokens is not None:
            knobs.append(f"tokens={self.tokens}")
        if self.delay_ms is not None:
            knobs.append(f"delay_ms={self.delay_ms:g}")
        marker = f" [mock {' '.join(knobs)}]" if knobs else ""
        pad = (" " + "x" * self.padding) if self.padding else ""
        return f"load test {self.run_id} session {session} message {index}{pad}{marker}"

    def expected(self, text: str) -> str:
        return expected_answer([{"role": "user", "content": text}], self.default_tokens)


def compare(received: str, expected: str) -> str | None:
    """None when equal; else what went wrong: ``lost``, ``duplicated`` or ``corrupted``."""
    if received == expected:
        return None
    if len(received) < len(expected):
        return LOST
    if len(received) > len(expected):
        return DUPLICATED
    return CORRUPTED


def describe(received: str, expected: str) -> str:
    """A one-line diagnosis for logs: where the texts first differ."""
    at = next((i for i, (a, b) in enumerate(zip(received, expected)) if a != b),
              min(len(received), len(expected)))
    return (f"{compare(received, expected) or 'equal'}: got {len(received)} chars, expected "
            f"{len(expected)}; first difference at {at}: got {received[at:at + 20]!r}, "
            f"expected {expected[at:at + 20]!r}")
