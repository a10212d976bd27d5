"""``/api/services/*``: routes for programs, authenticated with an HMAC-signed query string
(see ``web.auth_keys.authenticate_signed_query`` and ``scripts/hmac_sign.py``)."""

from __future__ import annotations

from quart import Blueprint, request
from quart_schema import (
    document_response,
    security_scheme_blueprint,
    tag_blueprint,
    validate_response,
)

from web.errors import ErrorBody
from web.schemas import ServiceWhoAmI
from web.state import state_of

bp = Blueprint("services", __name__, url_prefix="/api/services")
tag_blueprint(bp, ["services"])
security_scheme_blueprint(bp, [{"hmac_key": [], "hmac_signature": []}])


@bp.get("/")
@validate_response(ServiceWhoAmI)
@document_response(ErrorBody, 401)
@document_response(ErrorBody, 403)
async def whoami() -> ServiceWhoAmI:
    """The email of the signed key's owner: a check that signing works."""
    return ServiceWhoAmI(your_email=state_of(request.scope).email or "")
