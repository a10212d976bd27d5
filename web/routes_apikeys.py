"""``/api/user/apikeys`` and their IP allow-lists (JWT routes; another user's id is 404).

Shaped as the original server's clients call them: lists are plain JSON lists, an allow-list
entry's address is ``ip_address``, adding an address that is already listed answers the existing
entry (200, as a new one), a deletion answers ``{"message": "OK"}`` (plus ``id``/``deleted``) and
may be confirmed with ``?access_key=``.
"""

from __future__ import annotations

from quart import Blueprint, current_app
from quart_schema import (
    security_scheme_blueprint,
    tag_blueprint,
    validate_querystring,
    validate_request,
    validate_response,
)

from core.errors import ApiError, StorageConflict
from core.secret_box import SecretBox
from storage import accounts
from web.routes_user import current_user, document_errors
from web.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyDeleteQuery,
    ApiKeyOut,
    ApiKeyUpdate,
    DeletedOut,
    WhitelistCreate,
    WhitelistOut,
)
from web.services import get_services

bp = Blueprint("apikeys", __name__, url_prefix="/api/user/apikeys")
tag_blueprint(bp, ["api keys"])
security_scheme_blueprint(bp, [{"bearer": []}, {"cookie": []}])

ID = "int(max=9223372036854775807)"


def key_out(key: accounts.ApiKeyRecord) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        access_key=key.access_key,
        user_memo=key.user_memo,
        status=key.status,
        is_whitelisted=key.is_whitelisted,
        created_at=key.created_at,
    )


def whitelist_out(row: accounts.WhitelistRecord) -> WhitelistOut:
    return WhitelistOut(id=row.id, ip_address=row.ip_addr, created_at=row.created_at)


def _key_not_found() -> ApiError:
    return ApiError(404, "api_key_not_found", "No such API key.")


def _sql() -> accounts.UnitRunner:
    return get_services(current_app).storage.sql


@bp.get("")
@validate_response(list[ApiKeyOut])
@document_errors()
async def list_keys() -> list[ApiKeyOut]:
    """The user's API keys, a JSON list (secrets are never listed)."""
    keys = await accounts.list_api_keys(_sql(), current_user().id)
    return [key_out(k) for k in keys]


@bp.post("")
@validate_request(ApiKeyCreate)
@validate_response(ApiKeyCreated, 201)
@document_errors(400, 422)
async def create_key(data: ApiKeyCreate) -> tuple[ApiKeyCreated, int]:
    """A new API key; its ``secret_key`` is shown in this response only."""
    settings = get_services(current_app).settings
    limit = settings.max_api_keys_per_user
    key = await accounts.create_api_key(_sql(), current_user().id, data.user_memo, limit,
                                        box=SecretBox.from_settings(settings))
    if key is None:
        raise ApiError(400, "max_api_keys", f"At most {limit} API keys per user.", {"max": limit})
    return ApiKeyCreated(**key_out(key).model_dump(), secret_key=key.plain_secret), 201


@bp.put(f"/<{ID}:key_id>")
@validate_request(ApiKeyUpdate)
@validate_response(ApiKeyOut)
@document_errors(404, 422)
async def update_key(key_id: int, data: ApiKeyUpdate) -> ApiKeyOut:
    """Change the memo and/or the status (``active`` / ``disabled``)."""
    changes = {name: getattr(data, name) for name in data.model_fields_set}
    if changes.get("status", "") is None:
        del changes["status"]
    key = await accounts.update_api_key(_sql(), current_user().id, key_id, changes)
    if key is None:
        raise _key_not_found()
    return key_out(key)


@bp.delete(f"/<{ID}:key_id>")
@validate_querystring(ApiKeyDeleteQuery)
@validate_response(DeletedOut)
@document_errors(404, 422)
async def delete_key(key_id: int, query_args: ApiKeyDeleteQuery) -> DeletedOut:
    """Delete an API key: it stops authenticating at once. With ``?access_key=`` (as the
    original server required), a key whose access key differs is not deleted (404)."""
    user_id = current_user().id
    if query_args.access_key is not None:
        keys = await accounts.list_api_keys(_sql(), user_id)
        if not any(k.id == key_id and k.access_key == query_args.access_key for k in keys):
            raise _key_not_found()
    if not await accounts.delete_api_key(_sql(), user_id, key_id):
        raise _key_not_found()
    return DeletedOut(id=key_id)


@bp.get(f"/<{ID}:key_id>/whitelists")
@validate_response(list[WhitelistOut])
@document_errors(404)
async def list_whitelists(key_id: int) -> list[WhitelistOut]:
    """The key's IP allow-list, a JSON list (empty: any IP may use the key)."""
    rows = await accounts.list_whitelists(_sql(), current_user().id, key_id)
    if rows is None:
        raise _key_not_found()
    return [whitelist_out(r) for r in rows]


async def _listed(user_id: int, key_id: int, ip_address: str) -> accounts.WhitelistRecord | None:
    rows = await accounts.list_whitelists(_sql(), user_id, key_id)
    return next((r for r in rows or () if r.ip_addr == ip_address), None)


@bp.post(f"/<{ID}:key_id>/whitelists")
@validate_request(WhitelistCreate)
@validate_response(WhitelistOut, 200)
@document_errors(400, 404, 409, 422)
async def add_whitelist(key_id: int, data: WhitelistCreate) -> WhitelistOut:
    """Allow an IPv4/IPv6 address or CIDR range to use the key. An address already listed
    answers its existing entry."""
    limit = get_services(current_app).settings.max_whitelists_per_key
    user_id = current_user().id
    try:
        row = await accounts.add_whitelist(_sql(), user_id, key_id, data.ip_address, limit)
    except StorageConflict:
        existing = await _listed(user_id, key_id, data.ip_address)
        if existing is None:  # deleted again in between: the caller may simply retry
            raise ApiError(409, "conflict", "The allow-list changed meanwhile.") from None
        return whitelist_out(existing)
    if row == "not_found":
        raise _key_not_found()
    if row == "limit":
        existing = await _listed(user_id, key_id, data.ip_address)
        if existing is not None:
            return whitelist_out(existing)
        raise ApiError(400, "max_whitelists", f"At most {limit} entries per key.", {"max": limit})
    return whitelist_out(row)


@bp.delete(f"/<{ID}:key_id>/whitelists/<{ID}:list_id>")
@validate_response(DeletedOut)
@document_errors(404)
async def delete_whitelist(key_id: int, list_id: int) -> DeletedOut:
    """Remove one allow-list entry."""
    if not await accounts.delete_whitelist(_sql(), current_user().id, key_id, list_id):
        raise ApiError(404, "whitelist_not_found", "No such allow-list entry.")
    return DeletedOut(id=list_id)
