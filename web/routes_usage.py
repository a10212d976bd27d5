"""``GET /api/user/usage?days=N``: the user's requests and tokens per day, API key and model.

Counts come from ``storage.usage``: the route first writes what Redis holds (``flush``, the
same writer as the background task, under its lock), then reads MariaDB alone, so an answer
that ended before the request is in the answer. ``complete`` is false when that write could
not happen (Redis or MariaDB down, another writer holding the lock past 5 s): the rows are then
what MariaDB held. Key id 0 is the chat page (its ticket sockets have no API key).
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from pydantic import BaseModel, Field
from quart import Blueprint, current_app
from quart_schema import (
    security_scheme_blueprint,
    tag_blueprint,
    validate_querystring,
    validate_response,
)

from chat_actors.service import Chat
from core.errors import ApiError, StorageError
from storage.usage import read_usage
from web.routes_user import current_user, document_errors
from web.services import get_services

log = logging.getLogger("chat.usage")

bp = Blueprint("usage", __name__, url_prefix="/api/user/usage")
tag_blueprint(bp, ["usage"])
security_scheme_blueprint(bp, [{"bearer": []}, {"cookie": []}])


class UsageQuery(BaseModel):
    days: int = Field(30, ge=1, le=366, description="today and the days before it (UTC)")


class UsageRowOut(BaseModel):
    day: date
    key_id: int = Field(description="the API key's id; 0: the chat page (no key)")
    model: str
    requests: int
    prompt_tokens: int
    answer_tokens: int


class UsageOut(BaseModel):
    since: date
    until: date
    complete: bool = Field(description="false when the counts not yet written could not be")
    usage: list[UsageRowOut] = Field(description="ordered by day, key id, model")


@bp.get("")
@validate_querystring(UsageQuery)
@validate_response(UsageOut)
@document_errors(422)
async def get_usage(query_args: UsageQuery) -> UsageOut:
    """Requests, prompt and answer tokens per UTC day, API key and model, over the chat socket
    and ``/v1``; days without use are left out."""
    services = get_services(current_app)
    chat = services.chat
    if not isinstance(chat, Chat):
        raise ApiError(503, "not_ready", "The chat service is not running.")
    complete = False
    try:
        complete = await chat.usage.flush()
    except StorageError as exc:
        log.warning("usage not written before a read: %s", exc)
    today = datetime.now(UTC).date()
    since = today - timedelta(days=query_args.days - 1)
    rows = await services.storage.sql.run(read_usage(current_user().id, since))
    return UsageOut(since=since, until=today, complete=complete, usage=[
        UsageRowOut(day=r.day, key_id=r.key_id, model=r.model, requests=r.requests,
                    prompt_tokens=r.prompt_tokens, answer_tokens=r.answer_tokens)
        for r in rows])
