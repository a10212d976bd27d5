"""Every exception this project raises on purpose.

    ChatServerError
    ├── ConfigError                 a setting is missing or invalid (start-up stops)
    │   └── SecretKeyInvalid        SECRETS_KEY / SECRETS_OLD_KEYS is not 32 bytes of base64url
    ├── SecretUndecryptable         a stored secret does not decrypt (core/secret_box.py)
    ├── StorageError                anything from Redis / MariaDB, mapped at the storage boundary
    │   ├── StorageUnavailable      cannot connect, connection lost, server restarting
    │   ├── StorageTimeout          a statement or command ran past its bound
    │   ├── StorageConflict         a unique / foreign-key constraint refused the write
    │   └── StorageCorrupt          stored data is not in the documented layout
    ├── ActorError
    │   ├── ActorDead               the actor stopped (or crashed) before it could answer
    │   ├── MailboxFull             a bounded mailbox refused a cast
    │   ├── SupervisorGaveUp        more than R restarts in T seconds: the supervisor stopped
    │   └── AccountClosed           the user's account was deleted: none of its sessions starts
    ├── UpstreamError               the OpenAI-compatible upstream failed
    │   ├── UpstreamTimeout         connect / first byte / gap between chunks ran out
    │   ├── UpstreamRateLimited     429 after the retries
    │   └── UpstreamContentFilter   finish_reason == "content_filter"
    ├── BudgetError                 a message cannot be answered within the token budget
    │   ├── MessageTooLong          one message over the per-request limit (not stored)
    │   └── ContextOverflow         the system messages alone do not fit
    ├── LimitError                  a per-user limit refused the request (Redis decides)
    │   ├── RateLimited             too many messages in the window
    │   ├── TooManyAnswers          too many answers generating at once
    │   └── BudgetExceeded          the user's tokens for the day are spent
    ├── CommandError                a slash command failed to parse or run
    │   ├── UnknownCommand
    │   └── BadArgument
    └── ApiError                    an HTTP-facing error with status and stable code

Driver exceptions are translated with ``raise OurError(...) from exc`` where they are caught,
so callers above ``storage/`` never import redis, sqlalchemy or asyncmy.
"""

from __future__ import annotations


class ChatServerError(Exception):
    """Base class of every error this project raises on purpose.

    ``code`` is the stable machine code a client sees (WebSocket ``error.code``, HTTP ``code``).
    """

    code = "internal_error"


class ConfigError(ChatServerError):
    """A setting is missing or invalid."""

    code = "bad_setting"


class SecretKeyInvalid(ConfigError):
    """Key material for ``core.secret_box`` (SECRETS_KEY, SECRETS_OLD_KEYS) is not usable."""


class SecretUndecryptable(ChatServerError):
    """A stored secret does not decrypt: encrypted under a key id that is not configured
    (``reason="unknown_key"``), altered or moved from another row (``"not_authentic"``), not in
    the encrypted format at all (``"clear"``) or broken (``"malformed"``). A server-side fault:
    the message names the key id, never key material or the secret."""

    code = "secret_unavailable"

    def __init__(self, msg: str, *, key_id: str | None, reason: str) -> None:
        super().__init__(msg)
        self.key_id = key_id
        self.reason = reason


class StorageError(ChatServerError):
    """A storage operation failed."""

    code = "storage_unavailable"


class StorageUnavailable(StorageError):
    """The store cannot be reached (down, restarting, connection lost)."""


class StorageTimeout(StorageError):
    """A statement or command exceeded its bound."""


class StorageConflict(StorageError):
    """A constraint (unique, foreign key) refused the write."""


class StorageCorrupt(StorageError):
    """Stored data does not follow the documented layout."""


class SessionMoved(ChatServerError):
    """Another process owns the session now: its lease moved, and Redis refused this process's
    write (the fencing token was stale). The session stops here; its sockets follow the owner."""

    code = "session_moved"


class SessionOwnedElsewhere(ChatServerError):
    """The session's lease is held by another process: reach it there."""

    code = "session_owned_elsewhere"

    def __init__(self, msg: str, *, owner: str) -> None:
        super().__init__(msg)
        self.owner = owner


class ActorError(ChatServerError):
    """An actor could not handle a message."""

    code = "actor_error"


class ActorDead(ActorError):
    """The actor stopped before it answered."""


class MailboxFull(ActorError):
    """The actor's bounded mailbox is full."""


class AccountClosed(ActorError):
    """The account was deleted in this process: its sessions must not start again (a late
    message would write its context back)."""

    code = "account_closed"


class UpstreamError(ChatServerError):
    """The OpenAI-compatible upstream failed."""

    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """Connect, first byte or the gap between chunks ran out."""

    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    """The upstream kept answering 429."""

    code = "rate_limited"


class UpstreamContentFilter(UpstreamError):
    """The upstream stopped the answer with finish_reason == "content_filter"."""

    code = "content_filter"


class ApiError(ChatServerError):
    """An error the HTTP edge turns into ``{"status", "msg", "detail", "code"}``."""

    def __init__(self, status: int, code: str, msg: str, detail: object = None) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.detail = detail


class BudgetError(ChatServerError):
    """A message cannot be answered within the model's token budget."""

    code = "too_long"


class MessageTooLong(BudgetError):
    """One user message is over ``max_message_tokens`` or cannot fit beside the system messages."""

    code = "too_long"

    def __init__(self, msg: str, *, tokens: int, limit: int) -> None:
        super().__init__(msg)
        self.tokens = tokens
        self.limit = limit


class ContextOverflow(BudgetError):
    """The system messages alone exceed what the model's window leaves for a prompt."""

    code = "context_overflow"

    def __init__(self, msg: str, *, tokens: int, limit: int) -> None:
        super().__init__(msg)
        self.tokens = tokens
        self.limit = limit


class LimitError(ChatServerError):
    """A per-user limit refused the request; ``retry_after`` is in seconds (0: unknown)."""

    code = "rate_limited"

    def __init__(self, msg: str, retry_after: int = 0) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class RateLimited(LimitError):
    """More messages than the window allows."""


class TooManyAnswers(LimitError):
    """The user already has the most answers generating at once."""

    code = "too_many_answers"


class BudgetExceeded(LimitError):
    """The answer's reserve does not fit in what is left of the user's daily tokens."""

    code = "budget_exceeded"


class CommandError(ChatServerError):
    """A slash command could not be parsed or run; the message is shown to the user."""

    code = "bad_argument"


class UnknownCommand(CommandError):
    """No command (or alias) has this name."""

    code = "unknown_command"


class BadArgument(CommandError):
    """A command's arguments are missing, extra or out of range."""

    code = "bad_argument"


class SupervisorGaveUp(ActorError):
    """A supervisor hit its restart intensity (more than R restarts in T seconds) and stopped."""
