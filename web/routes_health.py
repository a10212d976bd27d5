"""``GET /health`` (liveness: no storage) and ``GET /health/ready`` (pings Redis and the DB)."""

from __future__ import annotations

import logging

import trio
from quart import Blueprint, Response, current_app
from quart_schema import document_response, tag, validate_response

from web.errors import ErrorBody, error_response
from web.schemas import Liveness, Readiness
from web.services import get_services

bp = Blueprint("health", __name__)
log = logging.getLogger("chat.errors")
PING_TIMEOUT = 2.0


@bp.get("/health")
@tag(["health"])
@validate_response(Liveness)
async def health() -> Liveness:
    """Liveness: the process answers. Public, touches no storage."""
    return Liveness()


async def _probe(ping_name: str, ping: object) -> str:
    try:
        with trio.fail_after(PING_TIMEOUT):
            await ping()  # type: ignore[operator]
    except trio.TooSlowError:
        return "timeout"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; say which kind
        log.warning("readiness: %s ping failed: %s", ping_name, type(exc).__name__)
        return "unavailable"
    return "ok"


@bp.get("/health/ready")
@tag(["health"])
@validate_response(Readiness)
@document_response(ErrorBody, 503)
async def ready() -> Readiness | Response:
    """Readiness: Redis and the database both answer a ping (503 names the one that failed;
    ``detail`` maps each store to ok / timeout / unavailable)."""
    services = get_services(current_app)
    results: dict[str, str] = {}

    async def probe(name: str, ping: object) -> None:
        results[name] = await _probe(name, ping)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, "redis", services.storage.redis.ping)
        nursery.start_soon(probe, "database", services.storage.sql.ping)
    if all(v == "ok" for v in results.values()):
        return Readiness(**results)
    failed = sorted(name for name, v in results.items() if v != "ok")
    return error_response(503, "not_ready", f"Not ready: {', '.join(failed)}", results)
