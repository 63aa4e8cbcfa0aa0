"""One row, rewritten at start and by /readyz: a write that proves writes are possible."""

from __future__ import annotations

from receiver.store.db import Db


async def beat(db: Db, now: float) -> None:
    await db.run(
        "INSERT INTO heartbeat (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = ?",
        (now, now),
    )
