"""Block drafting in a helper process, so that it runs beside the event loop, not on it.

Drafting a block (reading its pending transfers and their receipts, building and
canonically encoding each entry, hashing the leaves and the Merkle root, signing the
header) was ~9% of the coordinator's CPU under the bench, all of it on the event loop's
core (docs/benchmarks.md, round 27). The helper drafts on another core: it reads the same
SQLite file (WAL lets it read while the coordinator writes) with the same `draft_block`,
and hands the draft back; the coordinator stores it in its own group commit behind the
guards of `coordinator.service.blocks`, exactly as it stores a draft of its own. The
helper never writes.

Protocol over the helper's stdin and stdout (`python -m coordinator.service.seal_worker`):
the parent writes one JSON line `{"db", "key", "log_level"}` (the key travels over the
private pipe, not the command line), then one line `{"chain_id", "now"}` per draft. The
helper answers the first with a READY frame and each draft with one frame: a kind byte,
two 4-byte big-endian lengths, a JSON document and the block's body (the entries' JSON
array as it is, not escaped inside the document). It exits when its stdin closes, so it
never outlives the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from coordinator.db.database import Database
from coordinator.service.blocks import Draft, ForeignSigner, draft_block, note_signer
from protocol.keys import PrivateKey, private_key_from_hex, private_key_hex, public_key_hex
from protocol.logfmt import log_to_stderr

log = logging.getLogger(__name__)

READY, DRAFT, NOTHING, FOREIGN, FAILED = b"R", b"D", b"N", b"F", b"E"
_LENGTHS = struct.Struct(">II")
# A helper that has not opened the database this long after starting, or not answered a
# draft (a page-at-a-time read and a block of at most 1,000 entries: milliseconds), is
# taken for hung and killed; the sealer drafts on the event loop meanwhile.
START_TIMEOUT_S = 60.0
DRAFT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
HELPER_NICENESS = 10  # added to the coordinator's: the kernel gives it ~1/10 of a busy core


class SealWorkerFailed(Exception):
    """The helper process could not start, died, hung or failed a draft."""


class SealWorker:
    """The coordinator's side of one helper process; one draft at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        return self._process.pid

    @classmethod
    async def start(cls, db_url: str, key: PrivateKey) -> SealWorker:
        """Start a helper on `db_url`'s database, signing with `key`; returns once it has
        opened the database. Raises SealWorkerFailed if it does not within START_TIMEOUT_S,
        OSError if the interpreter cannot be run."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "coordinator.service.seal_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=_helper_environment(),
        )
        worker = cls(process)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        config = {"db": db_url, "key": private_key_hex(key), "log_level": level}
        try:
            kind, document, _ = await worker._ask(config, START_TIMEOUT_S)
        except BaseException:  # failed (_ask killed it) or cancelled (it exits on EOF)
            worker.close_stdin()
            raise
        if kind != READY:
            await worker.close()
            raise SealWorkerFailed(f"the seal helper did not start: {document.get('message')}")
        return worker

    async def draft(self, chain_id: str, now: int) -> Draft | None:
        """The chain's next block drafted by the helper (None when nothing is pending).
        Raises ForeignSigner as draft_block does, SealWorkerFailed when the helper fails."""
        kind, document, body = await self._ask({"chain_id": chain_id, "now": now}, DRAFT_TIMEOUT_S)
        if kind == DRAFT:
            row = document["row"]
            row["body"] = body.decode()
            return Draft(document["block"], row, document["seqs"])
        if kind == NOTHING:
            return None
        if kind == FOREIGN:
            raise ForeignSigner(document["message"])
        raise SealWorkerFailed(f"the seal helper failed a draft: {document.get('message')}")

    async def _ask(self, request: dict[str, Any], limit_s: float) -> tuple[bytes, Any, bytes]:
        async with self._lock:
            stdin, stdout = self._process.stdin, self._process.stdout
            assert stdin is not None and stdout is not None
            try:
                stdin.write(orjson.dumps(request) + b"\n")
                async with asyncio.timeout(limit_s):
                    await stdin.drain()
                    head = await stdout.readexactly(1 + _LENGTHS.size)
                    document_size, body_size = _LENGTHS.unpack(head[1:])
                    document = await stdout.readexactly(document_size)
                    body = await stdout.readexactly(body_size)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                await self._kill()
                reason = "did not answer in time" if isinstance(exc, TimeoutError) else "died"
                raise SealWorkerFailed(f"the seal helper {reason} ({exc!r})") from exc
            except asyncio.CancelledError:
                # Its answer may be half read: the pipe is out of step, so the helper goes.
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                raise
        return head[:1], orjson.loads(document), body

    async def _kill(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        await self._process.wait()

    def close_stdin(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()

    async def close(self) -> None:
        """Close the helper's stdin (it exits by itself) and wait; kill it if it lingers."""
        self.close_stdin()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self._process.wait()
        except TimeoutError:
            await self._kill()


def _helper_environment() -> dict[str, str]:
    """This process's environment, with the directory this code was imported from first on
    PYTHONPATH: the helper runs the same code however the coordinator found it."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def _frame(out: BinaryIO, kind: bytes, document: Any, body: bytes = b"") -> None:
    data = orjson.dumps(document)
    out.write(kind + _LENGTHS.pack(len(data), len(body)))
    out.write(data)
    out.write(body)
    out.flush()


async def _answer(out: BinaryIO, db: Database, key: PrivateKey, request: dict[str, Any]) -> None:
    chain_id = request["chain_id"]
    try:
        draft = await draft_block(db, chain_id, key, int(request["now"]))
    except ForeignSigner as exc:
        _frame(out, FOREIGN, {"message": str(exc)})
        return
    except Exception as exc:  # the coordinator logs it and drafts itself this round
        log.exception("seal helper: drafting failed", extra={"chain_id": chain_id})
        _frame(out, FAILED, {"message": f"{type(exc).__name__}: {exc}"})
        return
    if draft is None:
        _frame(out, NOTHING, {})
        return
    # The coordinator stores this block (or a race refuses it): noting its signer spares
    # the next draft reading the tip's signature, and is only used if it became the tip.
    note_signer(db, chain_id, draft.block["hash"], public_key_hex(key))
    row = dict(draft.row)
    body = row.pop("body").encode()
    _frame(out, DRAFT, {"block": draft.block, "row": row, "seqs": draft.seqs}, body)


def main() -> int:
    # Frames go to a private copy of stdout; fd 1 becomes stderr, so that nothing printed
    # by accident can corrupt a frame.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    # Ctrl-C in a terminal reaches the whole process group: the coordinator shuts down and
    # closes this pipe, which is how the helper stops (without a traceback of its own).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Drafts are background work that a block interval absorbs; requests, dispatch and the
    # miners sharing these cores are not. Niced, the helper takes what they leave idle
    # rather than preempting the coordinator's loop (docs/benchmarks.md, round 27).
    with contextlib.suppress(OSError):
        os.nice(HELPER_NICENESS)
    requests = sys.stdin.buffer
    line = requests.readline()
    if not line:
        return 0
    config = orjson.loads(line)
    log_to_stderr(config.get("log_level", "warning"))
    loop = asyncio.new_event_loop()
    db = Database.create(config["db"])
    key = private_key_from_hex(config["key"])
    try:
        _frame(out, READY, {"pid": os.getpid()})
        while line := requests.readline():
            loop.run_until_complete(_answer(out, db, key, orjson.loads(line)))
    except BrokenPipeError:
        pass  # the coordinator went away
    finally:
        loop.run_until_complete(db.close())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
