"""Money: integers of micro-AIT inside, JSON numbers of AIT at the edges."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

UAIT_PER_AIT = 1_000_000
AIT_DECIMALS = 6
# Upper bound on any single amount: keeps every value inside the canonical-JSON safe range.
MAX_AMOUNT_UAIT = 2**53 - 1


def ait_to_uait(value: int | float | str | Decimal) -> int:
    """Convert an AIT amount to integer micro-AIT; refuses more than 6 decimals.

    Floats are read through their shortest repr, so 0.05 means 0.05, not its binary
    neighbour.
    """
    if isinstance(value, bool):
        raise ValueError("an amount must be a number, not a boolean")
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"{value!r} is not a number") from exc
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    scaled = amount * UAIT_PER_AIT
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value!r} has more than {AIT_DECIMALS} decimals")
    uait = int(scaled)
    if abs(uait) > MAX_AMOUNT_UAIT:
        raise ValueError(f"{value!r} is too large")
    return uait


def uait_to_ait(uait: int) -> float:
    """Micro-AIT to an AIT JSON number; exact, since repr of n/1e6 round-trips to 6 places."""
    return uait / UAIT_PER_AIT


def format_ait(uait: int) -> str:
    """A human string with all six decimals, e.g. '0.050000'."""
    sign = "-" if uait < 0 else ""
    whole, frac = divmod(abs(uait), UAIT_PER_AIT)
    return f"{sign}{whole}.{frac:06d}"
