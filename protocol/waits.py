"""Timed waits that keep a cancel.

Python 3.11's `asyncio.wait_for` drops a cancel that lands in the loop tick its inner wait
finishes (CPython gh-86296, fixed in 3.12): a loop that waits with it, cancelled at that
moment, goes back to waiting and never ends (a coordinator's shutdown hung on it).
`asyncio.timeout` awaits in the caller's own task, so the cancel always arrives.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until `event` is set or `timeout_s` passes (None: no limit); True when set."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
