"""Re-encrypt every API key's secret under the current ``SECRETS_KEY``: one command.

    python -m storage.rotate_secrets [--batch-size N]

Reads the settings (environment, ``.env``): every row not yet under ``SECRETS_KEY`` is decrypted
with the key its value names (one of ``SECRETS_OLD_KEYS``, or, outside prod, the key derived
from ``JWT_SECRET``) and encrypted again under ``SECRETS_KEY``. Rows already under it are left
as they are, so running it again changes nothing (idempotent) and an interrupted run is finished
by the next one. Rows are locked, changed and committed ``--batch-size`` at a time (default
500), so a running server is never blocked for long. Prints one line of counts.

A row that does not decrypt (its key is in neither setting, or it was altered or moved) is left
untouched and named on stderr; so is a row in clear: a clear secret is not the migrations' output
(``0002`` encrypted them all), so it is refused, not laundered into a valid ciphertext.

Exit status: 0 every row is under ``SECRETS_KEY``; 1 some rows were left (named on stderr);
2 bad settings or a database not at the latest migration; 4 MariaDB failed.

Procedure (README, "Rotating secrets"): new key in ``SECRETS_KEY``, the previous one added to
``SECRETS_OLD_KEYS``, restart the server, run this, then drop the old key and restart again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from core.errors import SecretUndecryptable
from core.secret_box import SecretBox, is_encrypted
from storage.accounts import secret_context
from storage.models import ApiKey

DEFAULT_BATCH = 500


@dataclass
class Rotation:
    """What one run did."""

    key_id: str
    rows: int = 0
    reencrypted: int = 0
    current: int = 0
    #: (row id, why) of the rows left as they were: undecryptable or in clear.
    left: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"rotate_secrets: SECRETS_KEY {self.key_id}: {self.rows} rows: "
                f"{self.reencrypted} re-encrypted, {self.current} already under it, "
                f"{len(self.left)} left (undecryptable or in clear)")


async def _rotate_batch(conn: AsyncConnection, box: SecretBox, after: int, size: int,
                        done: Rotation) -> int | None:
    """One batch in one transaction; the last id seen, or None when there are no more rows."""
    query = (select(ApiKey.id, ApiKey.user_id, ApiKey.access_key, ApiKey.secret_key)
             .where(ApiKey.id > after).order_by(ApiKey.id).limit(size).with_for_update())
    async with conn.begin():
        rows = (await conn.execute(query)).all()
        if not rows:
            return None
        updates = []
        for row_id, user_id, access_key, value in rows:
            done.rows += 1
            if box.is_current(value):
                done.current += 1
                continue
            if not is_encrypted(value):
                done.left.append((row_id, "stored in clear (not rotated: inspect this row)"))
                continue
            context = secret_context(user_id, access_key)
            try:
                plain = box.decrypt(value, context)
            except SecretUndecryptable as exc:
                done.left.append((row_id, str(exc)))
                continue
            updates.append({"row_id": row_id, "value": box.encrypt(plain, context)})
        if updates:
            await conn.execute(
                update(ApiKey).where(ApiKey.id == bindparam("row_id"))
                .values(secret_key=bindparam("value")),
                updates,
            )
            done.reencrypted += len(updates)
        return int(rows[-1][0])


async def rotate(url: str, box: SecretBox, batch_size: int = DEFAULT_BATCH) -> Rotation:
    """Re-encrypt every row of ``url``'s ``api_keys`` not yet under ``box``'s current key."""
    done = Rotation(key_id=box.current_key_id)
    engine = create_async_engine(url, poolclass=NullPool, hide_parameters=True)
    try:
        async with engine.connect() as conn:
            after: int | None = 0
            while after is not None:
                after = await _rotate_batch(conn, box, after, batch_size, done)
    finally:
        await engine.dispose()
    return done


def main(argv: list[str]) -> int:
    from core.errors import ConfigError, StorageError
    from core.settings import load_settings
    from storage.errors import map_sql_error, sql_reason
    from storage.migrate import alembic_config, current

    parser = argparse.ArgumentParser(prog="python -m storage.rotate_secrets",
                                     description="Re-encrypt every API key secret under "
                                                 "SECRETS_KEY (old keys: SECRETS_OLD_KEYS).")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                        help=f"rows per transaction (default {DEFAULT_BATCH})")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        settings = load_settings()
        box = SecretBox.from_settings(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    url = settings.sqlalchemy_url
    try:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        at = current(url)
        if at != head:
            print(f"error: the database is at migration {at}, not {head}: run "
                  "`python -m storage.migrate` first", file=sys.stderr)
            return 2
        done = asyncio.run(rotate(url, box, args.batch_size))
    except Exception as exc:
        mapped = map_sql_error(exc)
        if not isinstance(mapped, StorageError):
            raise
        print(f"error: MariaDB: {sql_reason(mapped)}", file=sys.stderr)
        return 4
    for row_id, why in done.left:
        print(f"api_keys id {row_id}: {why}", file=sys.stderr)
    print(done.summary(), flush=True)
    return 1 if done.left else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
