"""Miners seen by the hub: their last advert and counters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.db import schema
from coordinator.service.core import Core
from coordinator.service.jobstate import MinerIdentity
from coordinator.service.records import (
    dumps,
)
from protocol.timefmt import now_ms

jobs = schema.jobs


async def upsert_miner(core: Core, miner: MinerIdentity, advert: Mapping[str, Any]) -> None:
    """Remember a miner that authenticated (its last advert), for views and reasons."""

    async def op(conn: AsyncConnection) -> None:
        now = now_ms()
        values = {
            "address": miner.address,
            "public_key": miner.public_key,
            "advert": dumps(dict(advert)),
            "last_seen_ms": now,
        }
        result = await conn.execute(
            update(schema.miners).where(schema.miners.c.miner_id == miner.miner_id).values(**values)
        )
        if result.rowcount == 0:
            await conn.execute(
                schema.miners.insert(),
                {
                    "miner_id": miner.miner_id,
                    "first_seen_ms": now,
                    "jobs_completed": 0,
                    "jobs_failed": 0,
                    "reputation": 1.0,
                    **values,
                },
            )

    await core.db.write(op)


async def list_registered_miners(core: Core) -> list[dict[str, Any]]:
    """Every miner ever seen, with its last advert (decoded) and counters."""
    async with core.db.read() as conn:
        rows = await conn.execute(select(schema.miners).order_by(schema.miners.c.miner_id))
        return [{**row._asdict(), "advert": orjson.loads(row.advert)} for row in rows]
