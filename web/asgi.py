"""The ASGI entry point: ``hypercorn --worker-class trio 'web.asgi:app'``."""

from __future__ import annotations

from core.settings import load_settings
from web.app import create_app

app = create_app(load_settings())
