"""The browser chat page at `/chatgpt` and its static files.

Everything the page needs is served from `web/static/` by this server: no CDN, no run-time
build. The JavaScript libraries (marked, DOMPurify, highlight.js) are copied from npm into
`web/static/vendor/` at install time by `python -m scripts.vendor_js --install`.

A strict Content-Security-Policy (no inline script, no `eval`, same-origin connections only)
backs up the sanitizer: even an HTML injection that got past DOMPurify could not run script.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path

from quart import Blueprint, Response, send_from_directory
from werkzeug.exceptions import NotFound

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"
REQUIRED_VENDOR_FILES = ("marked.esm.js", "purify.es.js", "highlight.min.js")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate every time (ETag / Last-Modified make that a cheap 304).
    "Cache-Control": "no-cache",
}

# ES modules must be served with a JavaScript type, whatever the host's mime.types says.
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/css", ".css")
mimetypes.add_type("image/svg+xml", ".svg")

page_bp = Blueprint("page", __name__)


def missing_vendor_files() -> list[str]:
    """Vendored libraries that are not on disk (the page cannot work without them)."""
    return [name for name in REQUIRED_VENDOR_FILES if not (VENDOR_DIR / name).is_file()]


@page_bp.record_once
def _warn_if_not_vendored(_state: object) -> None:
    missing = missing_vendor_files()
    if missing:
        log.warning(
            "chat page: %s missing from %s; run `python -m scripts.vendor_js --install`",
            ", ".join(missing),
            VENDOR_DIR,
        )


@page_bp.after_request
async def _security_headers(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers[name] = value
    response.headers.pop("Expires", None)
    return response


@page_bp.get("/chatgpt")
@page_bp.get("/chatgpt/")
async def chat_page() -> Response:
    response = await send_from_directory(STATIC_DIR, "index.html", mimetype="text/html")
    return response


@page_bp.get("/chatgpt/static/<path:filename>")
async def chat_static(filename: str) -> Response:
    # send_from_directory refuses paths that leave STATIC_DIR (404); a name the file system
    # refuses (too long, ENAMETOOLONG) is not a file here either, not a server error.
    try:
        response = await send_from_directory(STATIC_DIR, filename)
    except OSError as exc:
        raise NotFound() from exc
    return response
