"""Argument checks for the Python-level entry points (types and ABI field ranges).

Non-ints raise ``TypeError`` (``bool`` counts as an int); ints that do not fit the ABI
field raise ``ValueError``. Nothing here ever lets a ``struct.error`` escape.
"""

from __future__ import annotations

import sys

U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

# Buffer formats accepted as "uint32" by send_many / sched_poll, with their byte order.
_NATIVE = sys.byteorder
_UINT32_FORMATS = {
    "I": _NATIVE, "@I": _NATIVE, "=I": _NATIVE, "<I": "little", ">I": "big", "!I": "big",
    "L": _NATIVE, "@L": _NATIVE, "=L": _NATIVE, "<L": "little", ">L": "big", "!L": "big",
}


def as_int(value: object, name: str) -> int:
    """``value`` as a plain int, or ``TypeError``."""
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return int(value)


def unsigned(value: object, name: str, maximum: int) -> int:
    """``value`` as an int in ``0..maximum``: ``TypeError``/``ValueError`` otherwise."""
    number = as_int(value, name)
    if not 0 <= number <= maximum:
        raise ValueError(f"{name} must be in 0..{maximum:#x}, not {number}")
    return number


def u16(value: object, name: str) -> int:
    """A ``domid_t`` argument."""
    return unsigned(value, name, U16_MAX)


def u32(value: object, name: str) -> int:
    """A ``uint32_t`` / ``evtchn_port_t`` argument."""
    return unsigned(value, name, U32_MAX)


def u64(value: object, name: str) -> int:
    """A ``uint64_t`` argument."""
    return unsigned(value, name, U64_MAX)


def int_in_range(value: object, name: str, low: int, high: int) -> int:
    """An int in ``low..high``: ``TypeError`` for a non-int, ``ValueError`` out of range."""
    value = as_int(value, name)
    if not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}, not {value!r}")
    return int(value)


def port_list(ports: object, name: str = "ports") -> list[int]:
    """A sequence of uint32 ints, or a buffer of uint32 (format ``I``/``L``, itemsize 4).

    Any other buffer format raises ``TypeError``; a non-int item ``TypeError``; an int
    outside ``0..2**32-1`` ``ValueError``.
    """
    try:
        view = memoryview(ports)  # type: ignore[arg-type]
    except TypeError:
        view = None
    if view is not None:
        with view:
            order = _UINT32_FORMATS.get(view.format)
            if order is None or view.itemsize != 4:
                raise TypeError(
                    f"{name} buffer must hold uint32 (format 'I' or 'L' with itemsize 4), "
                    f"not format {view.format!r} with itemsize {view.itemsize}"
                )
            raw = view.tobytes()
        return [int.from_bytes(raw[i : i + 4], order) for i in range(0, len(raw), 4)]
    if isinstance(ports, (str, dict)) or not hasattr(ports, "__iter__"):
        raise TypeError(f"{name} must be a sequence of ints or a uint32 buffer")
    return [u32(port, "port") for port in ports]
