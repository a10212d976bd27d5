"""OpenAPI (``/openapi.json``) and a docs page (``/docs``) that render without internet.

quart-schema's pages load Swagger UI from a CDN by default; here the Swagger UI files come from
the ``swagger-ui-bundle-v2`` wheel and are served under ``/docs-assets/``. The redoc and scalar
pages (CDN only) are switched off. ``/docs`` is our own page, a whole HTML document (doctype,
``<html>``, ``<head>`` with charset and title): quart-schema's template starts at ``<head>``,
which puts browsers in quirks mode.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import trio
from quart import Blueprint, Quart, Response
from quart_schema import APIKeySecurityScheme, HttpSecurityScheme, QuartSchema, hide
from werkzeug.exceptions import NotFound

try:
    import swagger_ui_bundle

    SWAGGER_DIR: Path | None = Path(swagger_ui_bundle.swagger_ui_path)
except ImportError:  # pragma: no cover - the docs page then needs the CDN
    SWAGGER_DIR = None

ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"})
_TYPES = {"js": "text/javascript", "css": "text/css", "png": "image/png"}
_cache: dict[str, bytes] = {}
TITLE = "Trio chat server"
OPENAPI_PATH = "/openapi.json"


@dataclass
class _Http(HttpSecurityScheme):
    description: str | None = None  # quart-schema's class drops it


@dataclass
class _ApiKey(APIKeySecurityScheme):
    description: str | None = None


SECURITY_SCHEMES: dict[str, HttpSecurityScheme | APIKeySecurityScheme] = {
    "bearer": _Http(
        scheme="bearer",
        bearer_format="JWT",
        description="JWT from /api/auth/login/email, as 'Authorization: Bearer <jwt>'.",
    ),
    "cookie": _ApiKey(
        name="Authorization",
        in_="cookie",
        description="The same 'Bearer <jwt>' in the HttpOnly Authorization cookie.",
    ),
    "hmac_key": _ApiKey(
        name="key",
        in_="query",
        description="Access key; the query also carries timestamp=<unix seconds>.",
    ),
    "hmac_signature": _ApiKey(
        name="secret",
        in_="header",
        description="base64(HMAC-SHA256(secret_key, raw query string exactly as sent)); "
        "within ±HMAC_WINDOW_SECONDS, each signature accepted once. See scripts/hmac_sign.py.",
    ),
}

assets_bp = Blueprint("docs_assets", __name__)


@assets_bp.get("/docs-assets/<name>")
@hide
async def docs_asset(name: str) -> Response:
    if SWAGGER_DIR is None or name not in ASSETS:
        raise NotFound()
    if name not in _cache:  # three small files, read once; a plain body streams everywhere
        _cache[name] = await trio.Path(SWAGGER_DIR / name).read_bytes()
    response = Response(_cache[name], content_type=_TYPES[name.rsplit(".", 1)[1]])
    response.cache_control.max_age = 86400
    response.cache_control.public = True
    return response


def docs_page(js_url: str, css_url: str) -> str:
    """The Swagger UI page: a complete HTML document (standards mode)."""
    title, js, css = (html.escape(v, quote=True) for v in (TITLE, js_url, css_url))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} - API docs</title>
  <link rel="stylesheet" type="text/css" href="{css}">
  <link rel="icon" type="image/png" href="/docs-assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{js}"></script>
  <script>
    SwaggerUIBundle({{
      url: "{OPENAPI_PATH}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      layout: "BaseLayout",
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
      showExtensions: true,
      showCommonExtensions: true
    }});
  </script>
</body>
</html>
"""


def install_docs(app: Quart) -> QuartSchema:
    if SWAGGER_DIR is not None:
        app.config["QUART_SCHEMA_SWAGGER_JS_URL"] = "/docs-assets/swagger-ui-bundle.js"
        app.config["QUART_SCHEMA_SWAGGER_CSS_URL"] = "/docs-assets/swagger-ui.css"
    app.register_blueprint(assets_bp)

    @app.get("/docs")
    @hide
    async def docs() -> Response:
        page = docs_page(app.config["QUART_SCHEMA_SWAGGER_JS_URL"],
                         app.config["QUART_SCHEMA_SWAGGER_CSS_URL"])
        return Response(page.encode(), content_type="text/html; charset=utf-8")

    return QuartSchema(
        app,
        info={
            "title": TITLE,
            "version": "1.0.0",
            "description": "Users, API keys and HMAC-signed service calls. Errors are always "
            '{"status", "msg", "detail", "code"}. A JSON body that is not UTF-8 JSON is 400 '
            "malformed_json, one over 1 MiB 413 payload_too_large, one sent as another content "
            "type 415 unsupported_media_type; a body that does not fit the schema is 422.",
        },
        openapi_path=OPENAPI_PATH,
        swagger_ui_path=None,  # /docs is ``docs_page``
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes=dict(SECURITY_SCHEMES),
        conversion_preference="pydantic",
    )
