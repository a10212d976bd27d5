"""``/api/user/apikeys`` and their IP allow-lists (JWT routes; another user's id is 404)."""

from __future__ import annotations

from quart import Blueprint, current_app
from quart_schema import (
    security_scheme_blueprint,
    tag_blueprint,
    validate_request,
    validate_response,
)

from core.errors import ApiError, StorageConflict
from storage import accounts
from web.routes_user import current_user, document_errors
from web.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyOut,
    ApiKeyUpdate,
    DeletedOut,
    WhitelistCreate,
    WhitelistList,
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


def _key_not_found() -> ApiError:
    return ApiError(404, "api_key_not_found", "No such API key.")


def _sql() -> accounts.UnitRunner:
    return get_services(current_app).storage.sql


@bp.get("")
@validate_response(ApiKeyList)
@document_errors()
async def list_keys() -> ApiKeyList:
    """The user's API keys (secrets are never listed)."""
    keys = await accounts.list_api_keys(_sql(), current_user().id)
    return ApiKeyList(api_keys=[key_out(k) for k in keys])


@bp.post("")
@validate_request(ApiKeyCreate)
@validate_response(ApiKeyCreated, 201)
@document_errors(400, 422)
async def create_key(data: ApiKeyCreate) -> tuple[ApiKeyCreated, int]:
    """A new API key; its ``secret_key`` is shown in this response only."""
    limit = get_services(current_app).settings.max_api_keys_per_user
    key = await accounts.create_api_key(_sql(), current_user().id, data.user_memo, limit)
    if key is None:
        raise ApiError(400, "max_api_keys", f"At most {limit} API keys per user.", {"max": limit})
    return ApiKeyCreated(**key_out(key).model_dump(), secret_key=key.secret_key), 201


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
@validate_response(DeletedOut)
@document_errors(404)
async def delete_key(key_id: int) -> DeletedOut:
    """Delete an API key: it stops authenticating at once."""
    if not await accounts.delete_api_key(_sql(), current_user().id, key_id):
        raise _key_not_found()
    return DeletedOut(id=key_id)


@bp.get(f"/<{ID}:key_id>/whitelists")
@validate_response(WhitelistList)
@document_errors(404)
async def list_whitelists(key_id: int) -> WhitelistList:
    """The key's IP allow-list (empty: any IP may use the key)."""
    rows = await accounts.list_whitelists(_sql(), current_user().id, key_id)
    if rows is None:
        raise _key_not_found()
    return WhitelistList(
        whitelists=[WhitelistOut(id=r.id, ip_addr=r.ip_addr, created_at=r.created_at) for r in rows]
    )


@bp.post(f"/<{ID}:key_id>/whitelists")
@validate_request(WhitelistCreate)
@validate_response(WhitelistOut, 201)
@document_errors(400, 404, 422)
async def add_whitelist(key_id: int, data: WhitelistCreate) -> tuple[WhitelistOut, int]:
    """Allow an IPv4/IPv6 address or CIDR range to use the key."""
    limit = get_services(current_app).settings.max_whitelists_per_key
    try:
        row = await accounts.add_whitelist(_sql(), current_user().id, key_id, data.ip_addr, limit)
    except StorageConflict:
        raise ApiError(400, "whitelist_exists", "This address is already listed.") from None
    if row == "not_found":
        raise _key_not_found()
    if row == "limit":
        raise ApiError(400, "max_whitelists", f"At most {limit} entries per key.", {"max": limit})
    return WhitelistOut(id=row.id, ip_addr=row.ip_addr, created_at=row.created_at), 201


@bp.delete(f"/<{ID}:key_id>/whitelists/<{ID}:list_id>")
@validate_response(DeletedOut)
@document_errors(404)
async def delete_whitelist(key_id: int, list_id: int) -> DeletedOut:
    """Remove one allow-list entry."""
    if not await accounts.delete_whitelist(_sql(), current_user().id, key_id, list_id):
        raise ApiError(404, "whitelist_not_found", "No such allow-list entry.")
    return DeletedOut(id=list_id)
