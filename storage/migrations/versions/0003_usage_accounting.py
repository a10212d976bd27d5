"""Usage accounting: ``usage_daily`` (per user, key, model, day) and ``usage_batches``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 02:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("api_key_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("requests", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("answer_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("user_id", "day", "api_key_id", "model"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_table(
        "usage_batches",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("written_at", mysql.DATETIME(fsp=6), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    op.create_index("ix_usage_batches_written_at", "usage_batches", ["written_at"])


def downgrade() -> None:
    op.drop_table("usage_batches")
    op.drop_table("usage_daily")
