"""Escrow estimates: advertised price per unit × estimated units (see docs/pricing.md).

Pure: the service passes in the offers the miner registry knows and the decoded input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol.frozen import direct_init

# Runtime units (SPEC §9): token, item, second, byte.
UNITS = ("token", "item", "byte", "second")
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_SECONDS = 60
CHARS_PER_TOKEN = 4  # a GPT-2 BPE token is about 4 characters of English text
# Until a model has history, assume these throughputs for estimated_time_seconds.
DEFAULT_UNITS_PER_SECOND: Mapping[str, float] = {
    "token": 20.0,
    "item": 50.0,
    "byte": 1_000_000.0,
    "second": 1.0,
}
MIN_TIME_SECONDS = 1
SETUP_SECONDS = 2  # dispatch + model load on a warm miner


@dataclass(frozen=True)
class Offer:
    """One miner's advertised price for one model."""

    miner_id: str
    model: str
    price_uait_per_unit: int
    unit: str
    connected: bool = True


@direct_init
@dataclass(frozen=True)
class Estimate:
    units: int
    unit: str | None
    price_uait_per_unit: int  # the price the escrow is sized for
    cost_uait: int
    time_seconds: int


def estimate_units(unit: str, job_input: Any, input_bytes: int, params: Mapping[str, Any]) -> int:
    """How many metered units a job is expected to use, by the unit its model is sold in."""
    if unit == "token":
        prompts = job_input if isinstance(job_input, list) and job_input else [job_input]
        max_new = _int_param(params, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        prompt_tokens = math.ceil(input_bytes / CHARS_PER_TOKEN)
        return prompt_tokens + max_new * len(prompts)
    if unit == "item":
        return len(job_input) if isinstance(job_input, list) and job_input else 1
    if unit == "byte":
        return max(input_bytes, 1)
    if unit == "second":
        return _int_param(params, "max_seconds", DEFAULT_SECONDS)
    return 1


def units_by_unit(job_input: Any, input_bytes: int, params: Mapping[str, Any]) -> dict[str, int]:
    """The job's estimated units in every unit a miner may sell in. Kept with the job at
    submit, so a miner seen only later (another unit than the estimate's) is priced right."""
    return {unit: estimate_units(unit, job_input, input_bytes, params) for unit in UNITS}


def _int_param(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return default
    return value


def estimate(
    offers: Sequence[Offer],
    job_input: Any,
    input_bytes: int,
    params: Mapping[str, Any],
    max_price_uait: int | None,
    units_per_second: float | None = None,
    history_unit: str | None = None,
) -> Estimate:
    """Size the escrow so that any miner the job may be given to is covered.

    The price is the highest advertised price among offers whose whole-job cost fits
    `max_price_uait` (all offers when there is no cap). With no usable offer the escrow is
    `max_price_uait` when given, else zero. `units_per_second` and `history_unit` are the
    model's measured throughput, when it has history.
    """
    best: Estimate | None = None
    for offer in offers:
        units = estimate_units(offer.unit, job_input, input_bytes, params)
        cost = units * offer.price_uait_per_unit
        if max_price_uait is not None and cost > max_price_uait:
            continue
        if best is None or cost > best.cost_uait:
            best = Estimate(units, offer.unit, offer.price_uait_per_unit, cost, 0)
    if best is None:
        unit = offers[0].unit if offers else history_unit
        units = estimate_units(unit, job_input, input_bytes, params) if unit else 1
        best = Estimate(units, unit, 0, max_price_uait or 0, 0)
    rate = units_per_second or DEFAULT_UNITS_PER_SECOND.get(best.unit or "", 1.0)
    seconds = max(MIN_TIME_SECONDS, SETUP_SECONDS + math.ceil(best.units / rate))
    return Estimate(best.units, best.unit, best.price_uait_per_unit, best.cost_uait, seconds)
