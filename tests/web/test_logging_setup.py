"""The server's logging, configured as at start-up, in a fresh interpreter (it changes global
logging state): httpx's one INFO line per upstream request stays out at INFO, shows at DEBUG."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import http.server, sys, threading
import httpx
from core.settings import load_settings
from web.logging_setup import configure_logging

configure_logging(load_settings(api_env="test", log_level=sys.argv[1]))
server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
httpx.get(f"http://127.0.0.1:{server.server_address[1]}/")
server.shutdown()
"""


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_httpx_request_lines_only_when_debugging(level: str, shown: bool) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT, level], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert ("HTTP Request: GET" in result.stderr) is shown, result.stderr
