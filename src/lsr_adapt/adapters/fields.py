"""Range checks of method config fields, called by each config dataclass's ``__post_init__``.

A bad value is an ``LsrAdaptError`` naming the dataclass, the field and what is allowed:

    LoRAConfig.r=0: must be an integer >= 1

and keeping the field, the value and the sentence (``errors.bad_value``), so ``config_schema``
reports the same value of a YAML config as ``model.lora.r=0: must be an integer >= 1``.
Integers may come as floats with an integer value (YAML may give ``2.0``); a boolean is never a
number; choices and cross-field rules (LSR ``form``, DyLoRA ``eval_rank <= r``) are the dataclass's own.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from ..errors import bad_value

POSITIVE_INT = "must be an integer >= 1"
POSITIVE_NUMBER = "must be a number > 0"
FRACTION = "must be a number in [0, 1)"
BOOL = "must be true or false"


def is_number(v) -> bool:
    """A finite real number, not a boolean."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    return isinstance(v, numbers.Integral) or math.isfinite(v)


def is_positive_int(v) -> bool:
    """An integer >= 1 (a float with an integer value too, as YAML may give; never a boolean)."""
    return is_number(v) and v == int(v) >= 1


def require(cfg, name: str, ok: bool, allowed: str) -> None:
    """``cfg.<name>`` is bad unless ``ok``: an ``LsrAdaptError`` reading ``<Config>.<name>=<value>: <allowed>``."""
    if not ok:
        raise bad_value(name, getattr(cfg, name), allowed, type(cfg).__name__)


def positive_ints(cfg, *names: str) -> None:
    for name in names:
        require(cfg, name, is_positive_int(getattr(cfg, name)), POSITIVE_INT)


def positive_numbers(cfg, *names: str) -> None:
    for name in names:
        v = getattr(cfg, name)
        require(cfg, name, is_number(v) and v > 0, POSITIVE_NUMBER)


def fraction(cfg, name: str) -> None:
    """A number in [0, 1) (dropout)."""
    v = getattr(cfg, name)
    require(cfg, name, is_number(v) and 0 <= v < 1, FRACTION)


def booleans(cfg, *names: str) -> None:
    for name in names:
        require(cfg, name, isinstance(getattr(cfg, name), bool), BOOL)


def factor_pair(cfg, name: str, which: str) -> None:
    """Null, or two positive integers (LSR's ``in_factors`` / ``out_factors``; that their product is
    the layer's dimension is checked where the layer is known)."""
    v = getattr(cfg, name)
    pair = hasattr(v, "__len__") and not isinstance(v, (str, bytes, Mapping)) and len(v) == 2
    require(cfg, name, v is None or (pair and all(is_positive_int(n) for n in v)),
            f"must be null or two positive integers whose product is the {which} dim, e.g. [32, 24]")
