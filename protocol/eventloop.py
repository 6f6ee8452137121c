"""Which event loop the daemons run on.

Both daemons are event loops that do little between I/O waits, so the loop's own overhead
is a share of every job: uvloop's loop (libuv, in C) instead of asyncio's (the selector and
`_run_once` in Python). uvloop is a dependency off Windows; without it, asyncio's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run(main)`, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
