"""Logging for a running server: ``configure_logging(settings)``, called once at start-up.

- ``chat.access`` (``web.access_log``): its lines are already JSON; they go to **stdout**, one
  per line, at INFO whatever ``LOG_LEVEL`` says (the request log is the server's output, not
  its diagnostics), and do not propagate.
- every other logger (``chat.errors``, storage, hypercorn, ...): **stderr**, at ``LOG_LEVEL``,
  one plain text line each (with a traceback when there is one); Alembic at WARNING at least.

Idempotent: calling it again replaces the handlers it installed, nothing else. Tests that use
pytest's ``caplog`` never call it, so they keep seeing every record.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from core.settings import Settings

ACCESS_LOGGER = "chat.access"
_MARK = "_chat_server_handler"


def _handler(stream: TextIO, fmt: str) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(fmt))
    setattr(handler, _MARK, True)
    return handler


def _replace(logger: logging.Logger, handler: logging.Handler) -> None:
    for old in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(old)
    logger.addHandler(handler)


def configure_logging(settings: Settings, tag: str = "") -> None:
    """JSON access lines to stdout at INFO; everything else to stderr at ``LOG_LEVEL``, each
    line with ``tag`` (a worker process's name, ``worker 2/4 pid N``) when there is one."""
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    where = tag.replace("%", "%%") + " " if tag else ""
    _replace(root, _handler(sys.stderr,
                            f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s"))

    # Alembic narrates every plugin and step at INFO: only its warnings, unless debugging.
    level: int = logging.getLevelNamesMapping()[settings.log_level]
    quiet = level if level <= logging.DEBUG else max(logging.WARNING, level)
    logging.getLogger("alembic").setLevel(quiet)
    # asyncmy logs MariaDB's notes ("database exists" after CREATE ... IF NOT EXISTS) as warnings.
    logging.getLogger("asyncmy").setLevel(max(logging.ERROR, level))
    # httpx and httpcore write one INFO line per upstream request (3,000 for 3,000 answers):
    # the request log and the session's own errors say what matters; DEBUG still shows them.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(quiet)

    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(logging.INFO)
    access.propagate = False
    _replace(access, _handler(sys.stdout, "%(message)s"))
