"""The signal that a session no longer lives where a socket's handle says."""

from __future__ import annotations

from collections.abc import Callable


class MoveSignal:
    """Fires once, when the session moved to another process or stopped here for good; each
    listener (a socket, which then attaches again) is called at that moment. Listeners instead
    of a task per socket waiting on an event: a waiting task costs ~1.8 KiB, and a server holds
    tens of thousands of idle sockets."""

    __slots__ = ("_fired", "_listeners")

    def __init__(self) -> None:
        self._fired = False
        self._listeners: list[Callable[[], None]] | None = None

    def is_set(self) -> bool:
        return self._fired

    def set(self) -> None:
        if self._fired:
            return
        self._fired = True
        listeners, self._listeners = self._listeners, None
        for listener in listeners or ():
            listener()

    def listen(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when the signal fires (at once if it has)."""
        if self._fired:
            listener()
        elif self._listeners is None:
            self._listeners = [listener]
        else:
            self._listeners.append(listener)

    def forget(self, listener: Callable[[], None]) -> None:
        if self._listeners and listener in self._listeners:
            self._listeners.remove(listener)
