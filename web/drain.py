"""A graceful stop of the chat edge, run when SIGTERM (or Ctrl-C) arrives and before Hypercorn
stops serving: Hypercorn would otherwise serve the sockets through its grace time and then drop
them all without a close frame, and the sessions would stop only after that, with nobody left
to hear how their answers ended.

1. No new chat sockets (503 ``server_restarting``).
2. Each session stops as soon as its answer in flight ends (an idle one at once): no new
   answer starts here, what waits stays in the session's inbox, and the session moves to
   another process with the sockets of other processes; this process's own sockets of it are
   closed as in 4. Answers get ``SHUTDOWN_GRACE_SECONDS`` to end.
3. Every session still running then stops: its answer is cut, its text stored as partial, and
   a ``session_stopped`` error takes its terminator's place on every socket.
4. Every socket gets a last error frame ``server_restarting`` (``close: true``) and a close
   frame 1012 (service restart), so its client reconnects; the drain waits (bounded) until they
   are closed.
"""

from __future__ import annotations

import logging

import trio

from chat_actors.service import Chat
from web.services import SERVICES_EXTENSION, Services

log = logging.getLogger("chat.drain")

CLOSE_RESTART = 1012
RESTARTING = ("server_restarting", "The server is restarting; reconnect in a moment.")
CLOSE_WAIT = 3.0  # seconds for the sockets to flush their last frames and close


async def drain_chat(app: object) -> None:
    services: Services | None = getattr(app, "extensions", {}).get(SERVICES_EXTENSION)
    if services is None or not isinstance(services.chat, Chat):
        return
    chat, watch = services.chat, services.socket_watch
    services.draining = True
    log.info("draining: %d session(s), %d answering: each goes as its answer ends",
             len(chat.registry), chat.registry.generating())
    chat.registry.begin_drain()  # each session stops (and moves) as its answer ends
    with trio.move_on_after(services.settings.shutdown_grace_seconds):
        while len(chat.registry):
            await trio.sleep(0.05)
    cut = chat.registry.generating()
    log.info("draining: stopping %d session(s) still running, %d answer(s) cut",
             len(chat.registry), cut)
    await chat.registry.stop()
    if watch is None:
        return
    watch.close_all(*RESTARTING, CLOSE_RESTART)
    with trio.move_on_after(CLOSE_WAIT):
        while len(watch):
            await trio.sleep(0.02)
