"""Kubernetes storage quantities (``15Gi``, ``500M``): the grammar the config accepts, and their
size in bytes, which a claim's resize check compares."""

from __future__ import annotations

import re
from decimal import Decimal

QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_MULTIPLIERS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def quantity_bytes(quantity: str) -> Decimal:
    """A storage quantity in bytes, as Kubernetes reads it."""
    match = QUANTITY.match(quantity.strip())
    if match is None:
        raise ValueError(f"{quantity!r} is not a storage quantity")
    return Decimal(match.group("number")) * _MULTIPLIERS[match.group("suffix") or ""]
