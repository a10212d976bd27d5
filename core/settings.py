"""One typed settings object, read from the environment and an optional ``.env`` file.

Every field is documented in ``.env-sample``. ``load_settings()`` turns pydantic's validation
report into one ``ConfigError`` line naming each bad setting, so start-up stops with a message a
person can act on.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Literal
from urllib.parse import SplitResult, quote_plus, urlsplit

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.errors import ConfigError, SecretKeyInvalid
from core.networks import parse_network
from core.secret_box import NEW_KEY_HINT, parse_key

CommaList = Annotated[list[str], NoDecode]

#: The JWT secret of ``.env-sample`` and of the defaults: public, so accepted only in tests.
SAMPLE_SECRET_PREFIX = "change-me"


class ModelSpec(BaseModel):
    """What the token budget needs to know of one model."""

    context_window: int = Field(gt=0)
    max_answer_tokens: int = Field(gt=0)
    #: Reasoning models (o-series) take ``max_completion_tokens`` and refuse sampling knobs.
    reasoning: bool = False


DEFAULT_MODELS: dict[str, ModelSpec] = {
    "gpt-4o": ModelSpec(context_window=128_000, max_answer_tokens=16_384),
    "gpt-4o-mini": ModelSpec(context_window=128_000, max_answer_tokens=16_384),
    "gpt-4.1": ModelSpec(context_window=1_047_576, max_answer_tokens=32_768),
    "gpt-4.1-mini": ModelSpec(context_window=1_047_576, max_answer_tokens=32_768),
    "gpt-4-turbo": ModelSpec(context_window=128_000, max_answer_tokens=4_096),
    "gpt-4": ModelSpec(context_window=8_192, max_answer_tokens=4_096),
    "gpt-3.5-turbo": ModelSpec(context_window=16_385, max_answer_tokens=4_096),
    "o3-mini": ModelSpec(context_window=200_000, max_answer_tokens=100_000, reasoning=True),
    "o4-mini": ModelSpec(context_window=200_000, max_answer_tokens=100_000, reasoning=True),
    "mock-gpt": ModelSpec(context_window=8_192, max_answer_tokens=1_024),
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    api_env: Literal["local", "test", "prod"] = "local"
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # MariaDB / MySQL: either DATABASE_URL or the MYSQL_* parts.
    database_url: str | None = None
    mysql_host: str = "127.0.0.1"
    mysql_port: int = Field(3306, ge=1, le=65535)
    mysql_user: str = "root"
    mysql_password: str = ""
    mysql_database: str = "chatserver"
    mysql_root_password: str | None = None
    mysql_statement_timeout: float = Field(5.0, gt=0, description="max_statement_time, seconds")
    mysql_pool_size: int = Field(10, ge=1)

    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "chat:"
    redis_timeout: float = Field(5.0, gt=0, description="socket timeout of one command, seconds")
    context_ttl_seconds: int = Field(30 * 24 * 3600, ge=60)

    # Auth
    jwt_secret: str = "change-me-local-only-jwt-secret-0123456789"
    jwt_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    #: Server key of the API keys' secrets at rest (core/secret_box.py): base64url of 32 bytes.
    #: Required in prod; elsewhere, when unset, derived from JWT_SECRET (HKDF-SHA256).
    secrets_key: str | None = Field(None, repr=False)
    #: Keys still accepted to decrypt during a rotation (``python -m storage.rotate_secrets``).
    secrets_old_keys: CommaList = Field([], repr=False)
    cookie_secure: bool = True
    hmac_window_seconds: int = Field(60, ge=1)
    max_api_keys_per_user: int = Field(3, ge=1)
    key_cache_seconds: float = Field(5.0, ge=0, description="access-key check cache; 0: off")
    max_whitelists_per_key: int = Field(10, ge=1)
    # Abuse limits (exact across processes, kept in Redis); 0 turns one off
    login_failures_per_email: int = Field(
        10, ge=0, description="failed logins per email per 5 minutes, then 429")
    login_attempts_per_ip: int = Field(
        50, ge=0, description="login attempts per client IP per 5 minutes, then 429")
    registrations_per_ip: int = Field(
        20, ge=0, description="registrations per client IP per hour, then 429")
    ws_connections_per_key: int = Field(
        20, ge=0, description="open chat sockets per API key; past it the upgrade gets 429")
    daily_token_budget: int = Field(
        0, ge=0, description="prompt + answer tokens per user per UTC day over the chat (and "
                             "the API); 0: no budget")
    usage_flush_seconds: float = Field(
        5.0, gt=0, description="how often usage counts (requests, tokens) move from Redis to "
                               "MariaDB")
    ws_ticket_seconds: float = Field(
        30.0, gt=0, description="how long a single-use socket ticket (POST /api/user/ws-ticket) "
                                "stays valid")
    trusted_hosts: CommaList = ["*"]
    allowed_origins: CommaList = []
    trusted_proxies: CommaList = []

    # Upstream (any OpenAI-compatible /v1/chat/completions)
    openai_api_key: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    default_model: str = "gpt-4o-mini"
    #: JSON; replaces ``DEFAULT_MODELS`` (a deployment may offer only its own models).
    models: Annotated[dict[str, ModelSpec], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_MODELS))
    unknown_model: Annotated[ModelSpec, NoDecode] = ModelSpec(context_window=8_192,
                                                              max_answer_tokens=1_024)
    token_margin: int = Field(64, ge=0)
    upstream_clients: int = Field(
        8, ge=1, description="idle upstream connections kept: 128 x this value")
    upstream_connect_timeout: float = Field(5.0, gt=0)
    upstream_first_byte_timeout: float = Field(30.0, gt=0)
    upstream_chunk_gap_timeout: float = Field(30.0, gt=0)
    upstream_retries: int = Field(3, ge=0)
    upstream_backoff_base: float = Field(0.5, ge=0)
    upstream_max_continuations: int = Field(2, ge=0)
    upstream_retry_after_cap: float = Field(8.0, ge=0)
    delta_interval: float = Field(
        0.06, ge=0, le=1,
        description="send an answer's text at most about once per this many seconds while it "
                    "streams quickly (a token arriving sooner is held until then, with the "
                    "ones behind it); 0 forwards every token as soon as it is read")

    # Sessions
    session_idle_seconds: float = Field(300.0, gt=0)
    chat_messages_per_minute: int = Field(
        30, ge=0, description="chat messages (and /retry) per user per minute, over all their "
                              "keys, rooms and sockets; 0: no limit")
    chat_answers_at_once: int = Field(
        4, ge=0, description="answers generating at once per user; 0: no limit")
    shutdown_grace_seconds: float = Field(
        5.0, ge=0, description="on SIGTERM: how long answers in flight may finish before they "
                               "are cut (stored partial) and the sockets closed with 1012")
    session_queue_limit: int = Field(8, ge=1)
    max_frame_bytes: int = Field(64 * 1024, ge=1024)
    max_message_tokens: int = Field(4_000, ge=1)

    listen_backlog: int = Field(
        4096, ge=16, le=65535,
        description="connections the kernel queues for the server while it is busy (Hypercorn's "
                    "default of 100 refused handshakes in a storm of 1,000 connects; Linux caps "
                    "it at net.core.somaxconn, 4096 by default)")

    workers: int = Field(
        1, ge=1, le=64,
        description="worker processes `make run` starts on the one listening socket; each is a "
                    "whole server, and they share sessions through Redis like separate hosts")
    session_lease_seconds: float = Field(
        5.0, ge=0.5, le=120,
        description="how long a process owns a session without renewing its lease in Redis: "
                    "after a process dies, another takes its sessions over within this time")

    # Translation (off unless TRANSLATOR_URL is set)
    translator_url: str | None = None

    # Metrics (GET /metrics, Prometheus text; off unless METRICS_TOKEN is set)
    metrics_token: str | None = Field(
        None, repr=False, min_length=16,
        description="bearer token of GET /metrics (the operator's scraper); unset: /metrics "
                    "answers 404")
    metrics_multiproc_dir: str | None = Field(
        None, description="directory of this host shared by the server's worker processes "
                          "(hypercorn --workers N): each writes its metrics there and a scrape "
                          "sums them; unset: one process (or PROMETHEUS_MULTIPROC_DIR)")

    @field_validator("trusted_hosts", "allowed_origins", "trusted_proxies", "secrets_old_keys",
                     mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("database_url", "openai_api_key", "translator_url", "secrets_key",
                     "metrics_token", "metrics_multiproc_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("models", "unknown_model", mode="before")
    @classmethod
    def _parse_json(cls, value: object, info: ValidationInfo) -> object:
        """JSON from the environment; empty means the default (compose passes unset as "")."""
        if not isinstance(value, str):
            return value
        if not value.strip():
            default = cls.model_fields[info.field_name or ""].get_default(call_default_factory=True)
            return default.model_dump() if isinstance(default, BaseModel) else default
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not valid JSON ({exc})") from None

    @field_validator("openai_base_url", "translator_url", mode="before")
    @classmethod
    def _strip_url(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("openai_base_url", "translator_url")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is not None and _http_url(value) is None:
            raise ValueError(f"{value!r} is not an http(s) URL: use scheme://host[:port][/path]")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _is_origin(origin):
                raise ValueError(f"{origin!r} is not an origin: use scheme://host[:port] or *")
        return value

    @field_validator("secrets_key")
    @classmethod
    def _check_secrets_key(cls, value: str | None) -> str | None:
        if value is not None:
            _check_key(value, "the value")
        return value

    @field_validator("secrets_old_keys")
    @classmethod
    def _check_old_keys(cls, value: list[str]) -> list[str]:
        for number, entry in enumerate(value, 1):
            _check_key(entry, f"entry {number}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            if parse_network(entry) is None:
                raise ValueError(f"{entry!r} is not an IP address or CIDR range")
        return value

    @model_validator(mode="after")
    def _check_prod(self) -> Settings:
        if len(self.jwt_secret.encode()) < 32:
            raise ValueError("JWT_SECRET must be at least 32 bytes")
        if self.jwt_secret.startswith(SAMPLE_SECRET_PREFIX) and self.api_env != "test":
            raise ValueError(
                "JWT_SECRET is the public sample value: set a random one "
                "(`make run` writes one into a new .env)"
            )
        if self.secrets_key is None and self.api_env == "prod":
            raise ValueError(f"SECRETS_KEY is required in prod (make one with {NEW_KEY_HINT})")
        if (self.secrets_key or "").startswith(SAMPLE_SECRET_PREFIX) and self.api_env != "test":
            raise ValueError(
                "SECRETS_KEY is the public sample value: set a random one "
                "(`make run` writes one into a new .env)"
            )
        if self.api_env == "prod" and "*" in self.trusted_hosts:
            raise ValueError("TRUSTED_HOSTS must list real host names in prod")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The asyncmy URL of the application database."""
        if self.database_url:
            return self.database_url
        return (
            f"mysql+asyncmy://{quote_plus(self.mysql_user)}:{quote_plus(self.mysql_password)}"
            f"@{self.mysql_host}:{self.mysql_port}/{self.mysql_database}?charset=utf8mb4"
        )

    def model_spec(self, name: str) -> ModelSpec:
        return self.models.get(name, self.unknown_model)


def _check_key(text: str, what: str) -> None:
    """A key setting's problem as pydantic reports it (a ``ValueError``)."""
    try:
        parse_key(text, what)
    except SecretKeyInvalid as exc:
        raise ValueError(str(exc)) from None


def _http_url(url: str) -> SplitResult | None:
    """The URL's parts if it is http(s) with a host and a valid port, else None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    return parts if parts.scheme in ("http", "https") and parts.hostname else None


def _is_origin(origin: str) -> bool:
    parts = _http_url(origin)
    return (
        parts is not None
        and parts.path in ("", "/")
        and not (parts.query or parts.fragment or parts.username)
    )


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming every bad setting, as its environment variable (and, inside a JSON
    setting, the path to the bad value: ``MODELS (local.context_window)``)."""
    parts = []
    for err in exc.errors():
        variable, *path = [str(p) for p in err["loc"]] or [""]
        name = (variable.upper() or "settings") + (f" ({'.'.join(path)})" if path else "")
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{name}: {msg}")
    return "invalid settings: " + "; ".join(parts)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, or raise ``ConfigError`` with one clear line.

    The ``.env`` file read is ``$CHAT_ENV_FILE`` (default ``.env``; empty: none, as the tests do).
    """
    overrides.setdefault("_env_file", os.environ.get("CHAT_ENV_FILE", ".env") or None)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
