"""The SQL tables (SQLAlchemy 2 typed declarative), InnoDB / utf8mb4.

Timestamps are ``DATETIME(6)`` holding **naive UTC**: the application sets them with
``utcnow()`` (``datetime.now(UTC)`` with the tzinfo dropped), and values read back are naive
datetimes to be read as UTC. The database never fills them in (no server defaults), so the
same rule holds on MySQL and MariaDB and in any server time zone.

The schema is created by the Alembic migrations in ``storage/migrations``, never by
``create_all``; ``tests/storage/test_migrations.py`` checks that they match these models.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    Enum,
    ForeignKey,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.dialects.mysql import DATETIME
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Now, as the naive UTC datetime every timestamp column stores."""
    return datetime.now(UTC).replace(tzinfo=None)


class SnsType(StrEnum):
    EMAIL = "email"
    FACEBOOK = "facebook"
    GOOGLE = "google"
    KAKAO = "kakao"


class UserStatus(StrEnum):
    ACTIVE = "active"
    DELETED = "deleted"
    BLOCKED = "blocked"


class ApiKeyStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    DELETED = "deleted"


def _enum(cls: type[StrEnum], name: str) -> Enum:
    return Enum(cls, name=name, values_callable=lambda e: [m.value for m in e], length=None)


Timestamp = DATETIME(fsp=6)
TABLE_ARGS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        }
    )


class User(Base):
    __tablename__ = "users"
    __table_args__ = TABLE_ARGS

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(64))
    phone_number: Mapped[str | None] = mapped_column(String(32))
    profile_img: Mapped[str | None] = mapped_column(String(255))
    sns_type: Mapped[SnsType] = mapped_column(
        _enum(SnsType, "sns_type"), default=SnsType.EMAIL, server_default=SnsType.EMAIL.value
    )
    status: Mapped[UserStatus] = mapped_column(
        _enum(UserStatus, "user_status"),
        default=UserStatus.ACTIVE,
        server_default=UserStatus.ACTIVE.value,
    )
    marketing_agree: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = TABLE_ARGS

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    access_key: Mapped[str] = mapped_column(String(64), unique=True)
    #: Encrypted at rest (``core.secret_box``: ``sb1:<key id>:<base64url>``, 104 characters for
    #: a 40-character secret); see ``storage.accounts.secret_context`` for what it is bound to.
    secret_key: Mapped[str] = mapped_column(String(255))
    user_memo: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[ApiKeyStatus] = mapped_column(
        _enum(ApiKeyStatus, "api_key_status"),
        default=ApiKeyStatus.ACTIVE,
        server_default=ApiKeyStatus.ACTIVE.value,
    )
    is_whitelisted: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)


class ApiWhitelist(Base):
    __tablename__ = "api_whitelists"
    __table_args__ = (UniqueConstraint("api_key_id", "ip_addr"), TABLE_ARGS)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    api_key_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("api_keys.id", ondelete="CASCADE")
    )
    ip_addr: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class ChatRoom(Base):
    __tablename__ = "chat_rooms"
    __table_args__ = (UniqueConstraint("user_id", "room_key"), TABLE_ARGS)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    room_key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class UsageDaily(Base):
    """Requests and tokens per user, API key (0: the chat page), model and UTC day, added to
    by ``storage.usage``'s writer. No foreign keys: a batch must never be refused."""

    __tablename__ = "usage_daily"
    __table_args__ = TABLE_ARGS

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    api_key_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    answer_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class UsageBatch(Base):
    """The ids of the usage batches written: each is written at most once (``storage.usage``)."""

    __tablename__ = "usage_batches"
    __table_args__ = TABLE_ARGS

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    written_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
