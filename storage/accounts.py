"""Units of work for users, API keys and their IP allow-lists.

Each function takes anything with ``await run(unit)`` (the ``SqlActor``), runs ONE transaction
and returns frozen records (plain data: nothing lazy crosses back to Trio). Outcomes that are not
errors of the store (a row that is not there or not the caller's, a limit reached) are return
values; a unique index refusing a write raises ``StorageConflict`` (mapped by the SQL actor).

Ownership is part of every query: a key id that exists but belongs to someone else is "not
found", exactly like one that does not exist.

API keys' secrets are encrypted at rest (``core.secret_box``, bound to ``secret_context``):
records read back carry the encrypted value, ``reveal_secret`` decrypts it (the HMAC check does,
nothing else needs it); only the record ``create_api_key`` returns holds the plaintext, once.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.secret_box import SecretBox
from storage.models import (
    ApiKey,
    ApiKeyStatus,
    ApiWhitelist,
    ChatRoom,
    SnsType,
    User,
    UserStatus,
    utcnow,
)

T = TypeVar("T")


class UnitRunner(Protocol):
    async def run(self, unit: Callable[[AsyncSession], Awaitable[T]]) -> T: ...


@dataclass(frozen=True)
class UserRecord:
    id: int
    email: str
    password_hash: str | None
    name: str | None
    phone_number: str | None
    profile_img: str | None
    sns_type: str
    status: str
    marketing_agree: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ApiKeyRecord:
    id: int
    user_id: int
    access_key: str
    #: As stored: encrypted (``reveal_secret`` decrypts it), never the plaintext.
    secret_key: str = field(repr=False)
    user_memo: str | None
    status: str
    is_whitelisted: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class NewApiKeyRecord(ApiKeyRecord):
    """What ``create_api_key`` returns: the stored key and its plaintext secret, shown once."""

    plain_secret: str = field(repr=False)


@dataclass(frozen=True)
class WhitelistRecord:
    id: int
    api_key_id: int
    ip_addr: str
    created_at: datetime


@dataclass(frozen=True)
class KeyAuthRecord:
    """Everything needed to authenticate with an access key, read in one unit."""

    key: ApiKeyRecord
    owner: UserRecord
    allowed: tuple[str, ...]


USER_FIELDS = ("name", "phone_number", "profile_img", "marketing_agree")


def _user(row: User) -> UserRecord:
    return UserRecord(
        id=row.id,
        email=row.email,
        password_hash=row.password_hash,
        name=row.name,
        phone_number=row.phone_number,
        profile_img=row.profile_img,
        sns_type=str(SnsType(row.sns_type).value),
        status=str(UserStatus(row.status).value),
        marketing_agree=bool(row.marketing_agree),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _key(row: ApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        user_id=row.user_id,
        access_key=row.access_key,
        secret_key=row.secret_key,
        user_memo=row.user_memo,
        status=str(ApiKeyStatus(row.status).value),
        is_whitelisted=bool(row.is_whitelisted),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _whitelist(row: ApiWhitelist) -> WhitelistRecord:
    return WhitelistRecord(
        id=row.id, api_key_id=row.api_key_id, ip_addr=row.ip_addr, created_at=row.created_at
    )


# ---- users -------------------------------------------------------------------------------


async def create_user(
    sql: UnitRunner, email: str, password_hash: str, sns_type: str = "email"
) -> UserRecord:
    """Insert a user; ``StorageConflict`` when the email is taken (unique index)."""

    async def unit(session: AsyncSession) -> UserRecord:
        now = utcnow()
        row = User(
            email=email,
            password_hash=password_hash,
            sns_type=SnsType(sns_type),
            status=UserStatus.ACTIVE,
            marketing_agree=False,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        await session.flush()
        return _user(row)

    return await sql.run(unit)


async def get_user(sql: UnitRunner, user_id: int) -> UserRecord | None:
    async def unit(session: AsyncSession) -> UserRecord | None:
        row = await session.get(User, user_id)
        return None if row is None else _user(row)

    return await sql.run(unit)


async def get_users(sql: UnitRunner, user_ids: Sequence[int]) -> dict[int, UserRecord]:
    """Many users by id in one unit; ids with no user are absent."""

    async def unit(session: AsyncSession) -> dict[int, UserRecord]:
        rows = (await session.execute(select(User).where(User.id.in_(user_ids)))).scalars()
        return {row.id: _user(row) for row in rows}

    return await sql.run(unit)


async def get_user_by_email(sql: UnitRunner, email: str) -> UserRecord | None:
    async def unit(session: AsyncSession) -> UserRecord | None:
        row = (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()
        return None if row is None else _user(row)

    return await sql.run(unit)


async def update_user(
    sql: UnitRunner, user_id: int, changes: Mapping[str, object]
) -> UserRecord | None:
    """Set profile fields (only those in ``USER_FIELDS``)."""
    values = {k: v for k, v in changes.items() if k in USER_FIELDS}

    async def unit(session: AsyncSession) -> UserRecord | None:
        row = await session.get(User, user_id)
        if row is None:
            return None
        for name, value in values.items():
            setattr(row, name, value)
        row.updated_at = utcnow()
        await session.flush()
        return _user(row)

    return await sql.run(unit)


async def set_password_hash(
    sql: UnitRunner, user_id: int, old_hash: str | None, new_hash: str
) -> bool:
    """Replace the hash of an active user if it is still ``old_hash`` (compare and set: of two
    changes at once, one wins and the other changes nothing)."""

    async def unit(session: AsyncSession) -> bool:
        result = await session.execute(
            update(User)
            .where(User.id == user_id, User.status == UserStatus.ACTIVE,
                   User.password_hash == old_hash)
            .values(password_hash=new_hash, updated_at=utcnow())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    return await sql.run(unit)


async def set_user_status(sql: UnitRunner, user_id: int, status: str) -> bool:
    async def unit(session: AsyncSession) -> bool:
        row = await session.get(User, user_id)
        if row is None:
            return False
        row.status = UserStatus(status)
        row.updated_at = utcnow()
        return True

    return await sql.run(unit)


async def delete_user(sql: UnitRunner, user_id: int) -> bool:
    """Mark the user deleted, scrub personal data (frees the email), disable their keys and
    delete their chat rooms' rows: one transaction. (Chat contexts live in Redis: the caller's
    ``user_deleted_hooks`` remove those.)"""

    async def unit(session: AsyncSession) -> bool:
        row = await session.get(User, user_id, with_for_update=True)
        if row is None or row.status == UserStatus.DELETED:
            return False
        now = utcnow()
        row.status = UserStatus.DELETED
        row.email = f"deleted+{row.id}@deleted.invalid"
        row.password_hash = None
        row.name = row.phone_number = row.profile_img = None
        row.marketing_agree = False
        row.updated_at = now
        await session.execute(
            update(ApiKey)
            .where(ApiKey.user_id == user_id, ApiKey.status == ApiKeyStatus.ACTIVE)
            .values(status=ApiKeyStatus.DISABLED, updated_at=now)
        )
        await session.execute(delete(ChatRoom).where(ChatRoom.user_id == user_id))
        return True

    return await sql.run(unit)


# ---- API keys ----------------------------------------------------------------------------


def new_access_key() -> str:
    return secrets.token_urlsafe(24)  # 32 URL-safe characters: fits a URL path segment


def new_secret_key() -> str:
    return secrets.token_urlsafe(30)  # 40 characters


def secret_context(user_id: int, access_key: str) -> bytes:
    """What a key's encrypted secret is bound to (its associated data): the column, the owner
    and the access key. A ciphertext copied to another key's row, or a row moved to another user,
    does not decrypt. (Only the access key is free text, and it comes last: unambiguous.)"""
    return f"api_keys.secret_key\n{int(user_id)}\n{access_key}".encode()


def reveal_secret(box: SecretBox, key: ApiKeyRecord) -> str:
    """The plaintext secret of a stored key; ``SecretUndecryptable`` when it does not decrypt
    (a key id not configured, a value altered, moved or stored in clear)."""
    return box.decrypt(key.secret_key, secret_context(key.user_id, key.access_key))


def _live_keys(user_id: int):  # type: ignore[no-untyped-def]
    return select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.status != ApiKeyStatus.DELETED)


async def list_api_keys(sql: UnitRunner, user_id: int) -> list[ApiKeyRecord]:
    async def unit(session: AsyncSession) -> list[ApiKeyRecord]:
        rows = (await session.execute(_live_keys(user_id).order_by(ApiKey.id))).scalars()
        return [_key(r) for r in rows]

    return await sql.run(unit)


async def get_api_key(sql: UnitRunner, user_id: int, key_id: int) -> ApiKeyRecord | None:
    async def unit(session: AsyncSession) -> ApiKeyRecord | None:
        row = await _owned_key(session, user_id, key_id)
        return None if row is None else _key(row)

    return await sql.run(unit)


async def create_api_key(
    sql: UnitRunner, user_id: int, user_memo: str | None, max_keys: int, *, box: SecretBox
) -> NewApiKeyRecord | None:
    """A new active key, or None when the user already has ``max_keys`` live keys. Its secret
    is stored encrypted by ``box``; the record returned carries the plaintext (``plain_secret``).

    The user's row is locked (``SELECT ... FOR UPDATE``) before counting, so concurrent
    creations for one user are serialized and the limit holds.
    """

    async def unit(session: AsyncSession) -> NewApiKeyRecord | None:
        owner = await session.get(User, user_id, with_for_update=True)
        if owner is None:
            return None
        count_query = select(func.count()).select_from(_live_keys(user_id).subquery())
        if (await session.execute(count_query)).scalar_one() >= max_keys:
            return None
        now = utcnow()
        access_key, plain_secret = new_access_key(), new_secret_key()
        row = ApiKey(
            user_id=user_id,
            access_key=access_key,
            secret_key=box.encrypt(plain_secret, secret_context(user_id, access_key)),
            user_memo=user_memo,
            status=ApiKeyStatus.ACTIVE,
            is_whitelisted=False,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        await session.flush()
        return NewApiKeyRecord(**vars(_key(row)), plain_secret=plain_secret)

    return await sql.run(unit)


async def _owned_key(
    session: AsyncSession, user_id: int, key_id: int, *, lock: bool = False
) -> ApiKey | None:
    query = _live_keys(user_id).where(ApiKey.id == key_id)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def update_api_key(
    sql: UnitRunner, user_id: int, key_id: int, changes: Mapping[str, object]
) -> ApiKeyRecord | None:
    """Change ``user_memo`` and/or ``status`` (active/disabled) of one of the user's keys."""

    async def unit(session: AsyncSession) -> ApiKeyRecord | None:
        row = await _owned_key(session, user_id, key_id, lock=True)
        if row is None:
            return None
        if "user_memo" in changes:
            row.user_memo = changes["user_memo"]  # type: ignore[assignment]
        if "status" in changes:
            status = ApiKeyStatus(str(changes["status"]))
            if status is ApiKeyStatus.DELETED:
                raise ValueError("use delete_api_key")
            row.status = status
        row.updated_at = utcnow()
        await session.flush()
        return _key(row)

    return await sql.run(unit)


async def delete_api_key(sql: UnitRunner, user_id: int, key_id: int) -> bool:
    """Mark one of the user's keys deleted (it disappears from lists, stops authenticating)."""

    async def unit(session: AsyncSession) -> bool:
        row = await _owned_key(session, user_id, key_id, lock=True)
        if row is None:
            return False
        row.status = ApiKeyStatus.DELETED
        row.updated_at = utcnow()
        return True

    return await sql.run(unit)


async def get_key_for_auth(sql: UnitRunner, access_key: str) -> KeyAuthRecord | None:
    """The key (any status), its owner and its allow-list, by access key."""
    return (await get_keys_for_auth(sql, [access_key])).get(access_key)


async def get_keys_for_auth(
    sql: UnitRunner, access_keys: Sequence[str]
) -> dict[str, KeyAuthRecord]:
    """``get_key_for_auth`` for many keys in one unit (two queries); missing keys are absent."""

    async def unit(session: AsyncSession) -> dict[str, KeyAuthRecord]:
        query = select(ApiKey, User).join(User, User.id == ApiKey.user_id)
        found = (await session.execute(query.where(ApiKey.access_key.in_(access_keys)))).all()
        if not found:
            return {}
        allowed: dict[int, list[str]] = {key.id: [] for key, _ in found}
        ips = await session.execute(
            select(ApiWhitelist.api_key_id, ApiWhitelist.ip_addr)
            .where(ApiWhitelist.api_key_id.in_(allowed))
            .order_by(ApiWhitelist.id)
        )
        for key_id, ip in ips:
            allowed[key_id].append(ip)
        return {
            key.access_key: KeyAuthRecord(
                key=_key(key), owner=_user(owner), allowed=tuple(allowed[key.id]))
            for key, owner in found
        }

    return await sql.run(unit)


# ---- IP allow-lists ----------------------------------------------------------------------


async def list_whitelists(
    sql: UnitRunner, user_id: int, key_id: int
) -> list[WhitelistRecord] | None:
    """The key's allow-list, or None when the key is not one of the user's live keys."""

    async def unit(session: AsyncSession) -> list[WhitelistRecord] | None:
        if await _owned_key(session, user_id, key_id) is None:
            return None
        query = select(ApiWhitelist).where(ApiWhitelist.api_key_id == key_id)
        rows = (await session.execute(query.order_by(ApiWhitelist.id))).scalars()
        return [_whitelist(r) for r in rows]

    return await sql.run(unit)


async def add_whitelist(
    sql: UnitRunner, user_id: int, key_id: int, ip_addr: str, max_entries: int
) -> WhitelistRecord | Literal["not_found", "limit"]:
    """Add an address/range (``StorageConflict`` if already listed). Key row locked first."""

    async def unit(session: AsyncSession) -> WhitelistRecord | Literal["not_found", "limit"]:
        key = await _owned_key(session, user_id, key_id, lock=True)
        if key is None:
            return "not_found"
        count_query = select(func.count()).where(ApiWhitelist.api_key_id == key_id)
        if (await session.execute(count_query)).scalar_one() >= max_entries:
            return "limit"
        row = ApiWhitelist(api_key_id=key_id, ip_addr=ip_addr, created_at=utcnow())
        session.add(row)
        key.is_whitelisted = True
        await session.flush()
        return _whitelist(row)

    return await sql.run(unit)


async def delete_whitelist(sql: UnitRunner, user_id: int, key_id: int, list_id: int) -> bool:
    async def unit(session: AsyncSession) -> bool:
        key = await _owned_key(session, user_id, key_id, lock=True)
        if key is None:
            return False
        query = select(ApiWhitelist).where(
            ApiWhitelist.id == list_id, ApiWhitelist.api_key_id == key_id
        )
        row = (await session.execute(query)).scalar_one_or_none()
        if row is None:
            return False
        await session.delete(row)
        await session.flush()
        left = select(func.count()).where(ApiWhitelist.api_key_id == key_id)
        key.is_whitelisted = (await session.execute(left)).scalar_one() > 0
        return True

    return await sql.run(unit)
