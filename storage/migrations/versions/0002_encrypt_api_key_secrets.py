"""API keys' secrets encrypted at rest: widen ``secret_key`` to 255, encrypt the clear rows.

A row is in clear when its value lacks the ``sb1:`` prefix of ``core.secret_box`` (the secrets
this server generates never contain ``:``); rows already encrypted are left as they are, so
running this again, or on a database partly converted by hand, changes nothing twice. The key is
the settings' (``SECRETS_KEY``; ``storage.migrate`` passes ``SecretBox.from_settings``), asked
for only when there is a row to convert. Rows are read and written in batches of ``BATCH``.

Downgrade decrypts every row back to clear (with the current or an old key) and narrows the
column to 64 again; a row that does not decrypt stops it before anything is narrowed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from core.secret_box import SecretBox, is_encrypted
from storage.accounts import secret_context

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500


def _box() -> SecretBox:
    """The settings' box: from ``storage.migrate``, else (the ``alembic`` command) the settings."""
    box = op.get_context().config.attributes.get("secret_box")  # type: ignore[union-attr]
    if isinstance(box, SecretBox):
        return box
    from core.settings import load_settings

    return SecretBox.from_settings(load_settings())


Change = Callable[[Callable[[], SecretBox], int, str, str], "str | None"]


def _convert(change: Change) -> int:
    """Apply ``change(box, user_id, access_key, value)`` (None: leave the row) to every row,
    ``BATCH`` rows at a time; ``box()`` is asked for the key only when a row needs it."""
    bind = op.get_bind()
    select = sa.text("SELECT id, user_id, access_key, secret_key FROM api_keys "
                     "WHERE id > :after ORDER BY id LIMIT :batch")
    update = sa.text("UPDATE api_keys SET secret_key = :value WHERE id = :id")
    boxes: list[SecretBox] = []

    def box() -> SecretBox:
        if not boxes:
            boxes.append(_box())
        return boxes[0]

    after, changed = 0, 0
    while rows := bind.execute(select, {"after": after, "batch": BATCH}).all():
        updates = []
        for row_id, user_id, access_key, value in rows:
            new = change(box, int(user_id), str(access_key), str(value))
            if new is not None:
                updates.append({"id": row_id, "value": new})
        if updates:
            bind.execute(update, updates)
            changed += len(updates)
        after = rows[-1][0]
    return changed


def _encrypt(box: Callable[[], SecretBox], user_id: int, access_key: str,
             value: str) -> str | None:
    if is_encrypted(value):
        return None
    return box().encrypt(value, secret_context(user_id, access_key))


def _decrypt(box: Callable[[], SecretBox], user_id: int, access_key: str,
             value: str) -> str | None:
    if not is_encrypted(value):
        return None
    return box().decrypt(value, secret_context(user_id, access_key))


def upgrade() -> None:
    op.alter_column("api_keys", "secret_key", existing_type=sa.String(length=64),
                    type_=sa.String(length=255), existing_nullable=False)
    _convert(_encrypt)


def downgrade() -> None:
    _convert(_decrypt)
    op.alter_column("api_keys", "secret_key", existing_type=sa.String(length=255),
                    type_=sa.String(length=64), existing_nullable=False)
