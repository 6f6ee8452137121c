"""API keys for the bench, many in one process: `coordinator keys create` is a process a
key (~1 s of start-up on the bench host), which made a run with a thousand wallets spend
15 minutes setting up. The same service call the command makes, in one process; prints
one JSON object a key (api_key, key_id, role, address, as the command prints them).

    python scripts/bench_keys.py --config coordinator.toml --role client --count 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from coordinator.db.database import Database
from coordinator.service.keys import create_key
from coordinator.settings import load_settings


async def create_keys(config: Path, role: str, count: int) -> None:
    settings = load_settings(config)
    db = await Database.open(settings.db_url)
    try:
        for _ in range(count):
            api_key, record, _ = await create_key(db, role, wallet_dir=settings.data_dir)
            fields = {"api_key": api_key, "key_id": record.key_id, "role": record.role}
            print(json.dumps({**fields, "address": record.address}), flush=True)
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--role", required=True)
    parser.add_argument("--count", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(create_keys(args.config, args.role, args.count))


if __name__ == "__main__":
    main()
