"""`ait chain verify`: fetch a chain's whole block log and audit it with chain.verify."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from chain.verify import VerifyReport, verify_chain
from client.cli_common import EXIT_ERROR, JsonOpt, guarded, run_api, settings, want_json
from client.errors import AitError, Forbidden, NotFound
from client.output import emit_json, error_line, note, stdout
from client.sdk import CoordinatorClient
from protocol.keys import is_address
from protocol.money import ait_to_uait, format_ait

app = typer.Typer(help="The per-chain block log.", no_args_is_help=True)

MAX_LIVE_LOOKUPS = 1000  # balances compared per run; an admin key may compare this many
SETTLE_RETRIES = 3
SETTLE_WAIT_S = 2.0


def _addresses(blocks: list[Any]) -> set[str]:
    found: set[str] = set()
    for block in blocks:
        entries = block.get("entries") if isinstance(block, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            for side in ("debit", "credit"):
                account = entry.get(side) if isinstance(entry, dict) else None
                if isinstance(account, dict) and is_address(account.get("address")):
                    found.add(account["address"])
    return found


def _only_balance(report: VerifyReport) -> bool:
    return all(failure.check == "balance" for failure in report.failures)


def _chain_entry(chains: dict[str, Any], chain_id: str | None) -> dict[str, Any]:
    items = [c for c in chains.get("chains") or [] if isinstance(c, dict)]
    if chain_id is None:
        chosen = [c for c in items if c.get("default")] or items[:1]
    else:
        chosen = [c for c in items if (c.get("id") or c.get("chain_id")) == chain_id]
    if not chosen:
        raise AitError(f"the coordinator has no chain {chain_id!r}")
    return chosen[0]


def _public_key(entry: dict[str, Any]) -> str:
    for key in ("public_key", "coordinator_public_key"):
        value = entry.get(key)
        if isinstance(value, str):
            return value
    raise AitError("the coordinator publishes no block-signing public key for this chain")


async def _live(client: CoordinatorClient, chain_id: str, addresses: list[str]) -> dict[str, Any]:
    """Live balances in micro-AIT of the addresses this key may read."""
    live: dict[str, dict[str, int]] = {}
    for address in addresses[:MAX_LIVE_LOOKUPS]:
        try:
            balance = await client.balance(address, chain_id)
        except (Forbidden, NotFound):
            continue  # a client key reads only its own address
        live[address] = {kind: _uait(balance, kind) for kind in ("available", "held")}
    return live


def _uait(balance: dict[str, Any], kind: str) -> int:
    """Exact micro-AIT: the `<kind>_uait` field when the coordinator sends it."""
    exact = balance.get(f"{kind}_uait")
    return exact if isinstance(exact, int) else ait_to_uait(balance[kind])


@app.command()
@guarded
def verify(
    chain_id: Annotated[
        str | None, typer.Option(help="Chain (default: the coordinator's).")
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(help="Trusted coordinator key (hex); default: the one /v1/chains publishes."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-check every block hash, link, signature, Merkle root and receipt of a chain,
    recompute every balance and compare with the live ones. Exit 0 only if all hold."""
    wanted = chain_id or settings().chain_id

    async def work(client: CoordinatorClient) -> tuple[VerifyReport, str]:
        entry = _chain_entry(await client.chains(), wanted)
        chain = str(entry.get("id") or entry.get("chain_id"))
        key = public_key or _public_key(entry)
        mine = (await client.me())["address"]
        for attempt in range(SETTLE_RETRIES + 1):
            blocks = [block async for block in client.all_blocks(chain)]
            others = sorted(_addresses(blocks) - {mine})
            live = await _live(client, chain, [mine, *others])
            report = verify_chain(blocks, key, live, chain_id=chain)
            if report.ok or attempt == SETTLE_RETRIES or not _only_balance(report):
                return report, chain
            # Settled but not yet sealed transfers move live balances before the log;
            # the sealer catches up within block_interval_seconds.
            note("live balances moved while reading the log; reading again")
            await asyncio.sleep(SETTLE_WAIT_S)
        raise AssertionError("unreachable")

    report, chain = run_api(work)
    if want_json(json_out):
        emit_json(report.to_dict())
    elif report.ok:
        stdout().print(
            f"chain {chain} verified: {report.blocks} blocks, {report.entries} entries, "
            f"{format_ait(report.minted_uait)} AIT minted, "
            f"{report.balances_compared} live balances match",
            markup=False,
        )
    if not report.ok:
        for failure in report.failures:
            error_line(str(failure))
        note(f"chain {chain}: {len(report.failures)} check(s) failed")
        raise typer.Exit(EXIT_ERROR)
