"""Request and response models (pydantic) of the REST routes; they also feed ``/openapi.json``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from core.networks import parse_network


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- auth --------------------------------------------------------------------------------


PASSWORD_MIN, PASSWORD_MAX = 8, 1024


class Credentials(Strict):
    email: str = Field(max_length=255, examples=["user@example.com"])
    password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        try:
            return validate_email(value, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(str(exc)) from None


class TokenOut(BaseModel):
    Authorization: str = Field(description="'Bearer <jwt>'; also set as the Authorization cookie")


# ---- user --------------------------------------------------------------------------------


class UserOut(BaseModel):
    id: int
    email: str
    name: str | None
    phone_number: str | None
    profile_img: str | None
    sns_type: str
    status: str
    marketing_agree: bool
    created_at: datetime
    updated_at: datetime


class UserUpdate(Strict):
    """Only the fields present change; ``null`` clears a nullable field. ``marketing_agree`` is
    never null (the column is NOT NULL): ``null`` there is a 422 naming it."""

    name: str | None = Field(default=None, max_length=64)
    phone_number: str | None = Field(default=None, max_length=32, pattern=r"^[0-9+() .-]*$")
    profile_img: str | None = Field(default=None, max_length=255)
    marketing_agree: bool = False


class PasswordChange(Strict):
    """The new password follows registration's rule (8-1024 characters)."""

    current_password: str = Field(min_length=1, max_length=PASSWORD_MAX)
    new_password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)


class DeletedOut(BaseModel):
    id: int
    deleted: bool = True
    message: str = Field(default="OK", description="As the original server answered a deletion.")


# ---- API keys ----------------------------------------------------------------------------


class ApiKeyOut(BaseModel):
    id: int
    access_key: str
    user_memo: str | None
    status: str
    is_whitelisted: bool
    created_at: datetime


class ApiKeyCreated(ApiKeyOut):
    secret_key: str = Field(description="Shown only in this response: store it now.")


class ApiKeyCreate(Strict):
    user_memo: str | None = Field(default=None, max_length=255)


class ApiKeyDeleteQuery(BaseModel):
    """The original server's clients confirm a deletion with the key's access key."""

    access_key: str | None = Field(
        default=None, max_length=64, description="When given, it must be the key's access key."
    )


class ApiKeyUpdate(Strict):
    user_memo: str | None = Field(default=None, max_length=255)
    status: Literal["active", "disabled"] | None = None


# ---- allow-lists -------------------------------------------------------------------------


class WhitelistOut(BaseModel):
    id: int
    ip_address: str
    created_at: datetime


class WhitelistCreate(Strict):
    """``ip_address`` as the original server named it; ``ip_addr`` (this server's first name for
    it) is still accepted, one or the other."""

    ip_address: str = Field(
        max_length=64,
        examples=["203.0.113.7", "10.0.0.0/8", "2001:db8::/32"],
        validation_alias=AliasChoices("ip_address", "ip_addr"),
    )

    @field_validator("ip_address")
    @classmethod
    def _valid_ip(cls, value: str) -> str:
        """An IPv4/IPv6 address or CIDR range (no zone id), stored in canonical form."""
        network = parse_network(value)
        if network is None:
            raise ValueError("not an IPv4/IPv6 address or CIDR range (IPv6 zone ids are refused)")
        return str(network) if "/" in value else str(network.network_address)


# ---- services / health -------------------------------------------------------------------


class ServiceWhoAmI(BaseModel):
    your_email: str


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    redis: str
    database: str


class LoggedOut(BaseModel):
    logged_out: bool = True
