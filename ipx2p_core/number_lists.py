"""Lists of numbers written as text ("5, 7.5, 10"), as the sweep node's widgets and the CLI's options take them."""

from __future__ import annotations

from typing import Sequence

from .errors import IP2PError

EXAMPLE = "5, 7.5, 10"


def parse_number_list(text: str, name: str) -> list[float]:
    """'5, 7.5, 10' → [5.0, 7.5, 10.0]. Commas, semicolons or spaces separate the numbers; at least one is needed.

    ``name`` says whose value it is in the error ("Text guidances", "--text").
    """
    items = str(text).replace(";", ",").replace(" ", ",").replace("\t", ",").split(",")
    items = [t for t in items if t.strip()]
    try:
        values = [float(t) for t in items]
    except ValueError:
        raise IP2PError(f"{name} must be numbers separated by commas, e.g. '{EXAMPLE}'; got {text!r}.") from None
    if not values:
        raise IP2PError(f"{name} needs at least one value, e.g. '{EXAMPLE}'; got {text!r}.")
    return values


def format_number_list(values: Sequence[float]) -> str:
    """[5.0, 7.5, 10.0] → '5, 7.5, 10' (what parse_number_list reads back)."""
    return ", ".join(f"{v:g}" for v in values)
