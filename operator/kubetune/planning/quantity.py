"""Kubernetes resource quantities ⇄ bytes.

`parse_quantity("80Gi")` is how `spec.resources.gpuMemory` (and `kubetune plan --gpu-memory`) become a
byte count; `format_bytes` is how every figure is shown to people (binary units, like `nvidia-smi`'s
MiB and the GiB most GPU spec sheets quote for 80 GB cards).
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

__all__ = ["format_bytes", "parse_quantity"]

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
# Kubernetes' grammar: <signed number><suffix>, the number may use an exponent ("1e9").
_QUANTITY = re.compile(
    r"^\s*([+]?(?:\d+(?:\.\d*)?|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?)\s*$"
)


def parse_quantity(value: str | int | float) -> int:
    """Parse a Kubernetes quantity (`80Gi`, `81559Mi`, `80G`, `1e10`, `85899345920`) into bytes.

    Fractions round up to a whole byte (memory is never over-promised). Raises `ValueError` with the
    accepted forms on anything else (negative numbers, milli-units, unknown suffixes).
    """
    if isinstance(value, bool):
        raise ValueError(f"not a memory quantity: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"memory quantity must not be negative: {value!r}")
        return value
    if isinstance(value, float):
        if value < 0 or value != value or value == float("inf"):
            raise ValueError(f"not a memory quantity: {value!r}")
        return int(Decimal(repr(value)).to_integral_value(rounding=ROUND_CEILING))
    match = _QUANTITY.match(value)
    if match is None:
        raise ValueError(
            f"not a memory quantity: {value!r} (use a Kubernetes quantity such as 80Gi, 81559Mi, 80G or 85899345920)"
        )
    number, exponent, suffix = match.groups()
    try:
        amount = Decimal(number)
        if exponent is not None:
            amount = amount * (Decimal(10) ** int(exponent[1:]))
        elif suffix in _BINARY:
            amount = amount * _BINARY[suffix]
        else:
            amount = amount * _DECIMAL[suffix or ""]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"not a memory quantity: {value!r}") from exc
    return int(amount.to_integral_value(rounding=ROUND_CEILING))


def format_bytes(num_bytes: int | float, *, precision: int = 1) -> str:
    """Human-readable binary size: `80 GiB`, `1.2 TiB`, `512 MiB`, `0 B`.

    Whole numbers drop the decimal (`80 GiB`, not `80.0 GiB`).
    """
    value = float(num_bytes)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{sign}{int(value)} B"
    text = f"{value:.{precision}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{sign}{text} {unit}"
