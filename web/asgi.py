"""The ASGI entry point: ``hypercorn --worker-class trio 'web.asgi:app'``.

Settings are read and logging configured at import (a bad setting stops the worker with one
line naming it); keep Hypercorn's own access log off (it would log raw query strings).
"""

from __future__ import annotations

from core.settings import load_settings
from web.app import create_app
from web.logging_setup import configure_logging

settings = load_settings()
configure_logging(settings)
app = create_app(settings, tune_gc=True)
