"""Checks of one setting's value, shared by the groups' readers (data_settings.py, settings.py,
runtime.py) and the commands' own keys (threshold, device): each raises a PetsegError with one line
naming the key, the bad value and what would be valid."""

from __future__ import annotations

from typing import Any

import torch

from petseg.errors import PetsegError


def positive(value: object, key: str, kind: type = float) -> None:
    """A positive number of ``kind`` (an int must be a whole number, a bool is neither)."""
    try:
        ok = not isinstance(value, bool) and kind(value) > 0 and kind(value) == float(value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PetsegError(f"{key} must be a positive {kind.__name__}, got {value!r}")


def optional_positive_int(value: object, key: str) -> None:
    if value is not None:
        positive(value, key, int)


def non_negative_int(value: object, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PetsegError(f"{key} must be an integer >= 0, got {value!r}")


def channel_numbers(values: object, key: str, channels: int = 3) -> list[float]:
    """One number per image channel (data.mean, data.std): R, G, B, or one for grayscale."""
    try:
        numbers = [float(v) for v in values if not isinstance(v, bool | str)]  # type: ignore[attr-defined]
        ok = len(numbers) == len(values) == channels  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        what = "3 numbers (R, G, B)" if channels == 3 else f"{channels} number(s), one per channel"
        raise PetsegError(f"{key} must be {what}, got {values!r}")
    return numbers


def check_threshold(value: object, key: str) -> float:
    """A probability threshold strictly between 0 and 1 (train.py, evaluate.py and inference.py)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise PetsegError(f"{key} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def check_device(value: object, key: str) -> str:
    """auto or a device torch knows; whether it is present here is runtime.resolve_device's to say."""
    if str(value) != "auto":
        try:
            torch.device(str(value))
        except (RuntimeError, ValueError):
            raise PetsegError(
                f"{key}={value} is not a device; use auto, cpu, cuda, cuda:<index> or mps"
            ) from None
    return str(value)


def check_decay(value: Any) -> float | None:
    """trainer.ema: null (off) or a decay strictly between 0 and 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise PetsegError(f"trainer.ema={value!r} must be null (off) or a decay between 0 and 1, e.g. 0.999")
    return float(value)
