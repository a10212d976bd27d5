"""Single-use socket tickets: a chat socket without a long-lived secret in its URL.

``POST /api/user/ws-ticket`` (JWT) returns a random ticket valid ``WS_TICKET_SECONDS`` (30 s);
``/ws/chatgpt?ticket=…&chat_room_id=…`` spends it (``GETDEL``: once, whichever process gets it
first). Redis keeps, under a hash of the ticket, the JWT it was asked with: spending it runs the
whole JWT check again (expiry, logout, password change, the user's status), and the open
socket stays tied to that token (``web.socket_watch`` rechecks it), so logging out or changing
the password also ends the sockets opened with it. A ticket socket belongs to the user, not to
an API key. URLs end up in proxy logs and browser history; a spent or expired ticket there is
worth nothing.
"""

from __future__ import annotations

import hashlib
import math
import secrets

from pydantic import BaseModel
from quart import Blueprint, current_app
from quart_schema import security_scheme_blueprint, tag_blueprint, validate_response

from core.errors import ApiError
from storage import accounts
from web.access_control import authenticate_token, token_from_request
from web.routes_user import document_errors
from web.services import Services, get_services

bp = Blueprint("ws_tickets", __name__, url_prefix="/api/user")
tag_blueprint(bp, ["chat socket"])
security_scheme_blueprint(bp, [{"bearer": []}, {"cookie": []}])


class TicketOut(BaseModel):
    """Connect within ``expires_in`` seconds: ``/ws/chatgpt?ticket=<ticket>&chat_room_id=…``."""

    ticket: str
    expires_in: int


def _key(services: Services, ticket: str) -> str:
    digest = hashlib.sha256(ticket.encode()).hexdigest()
    return services.storage.redis.key("ws-ticket", digest)


@bp.post("/ws-ticket")
@validate_response(TicketOut, 201)
@document_errors(401, 503)
async def new_ticket() -> tuple[TicketOut, int]:
    """A single-use ticket for one chat socket of the signed-in user."""
    services = get_services(current_app)
    token = token_from_request()
    assert token is not None  # access control let the request in with one
    ticket = secrets.token_urlsafe(24)
    seconds = max(1, math.ceil(services.settings.ws_ticket_seconds))
    await services.storage.redis.execute("SET", _key(services, ticket), token, "EX", seconds)
    return TicketOut(ticket=ticket, expires_in=seconds), 201


async def spend_ticket(services: Services, ticket: str) -> tuple[accounts.UserRecord, str]:
    """The ticket's user and the JWT it was asked with, if the ticket is fresh and unused and
    the token still good; the ticket is gone after this call either way. ``ApiError(403)``
    otherwise."""
    token = None
    if 0 < len(ticket) <= 64:
        token = await services.storage.redis.execute("GETDEL", _key(services, ticket))
    if token is None:
        raise ApiError(403, "ticket_invalid", "Unknown, used or expired socket ticket.")
    try:
        return await authenticate_token(services, token), token
    except ApiError as exc:
        raise ApiError(403, exc.code, exc.msg) from None
