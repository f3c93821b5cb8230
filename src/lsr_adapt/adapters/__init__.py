"""Adapter methods: one file per method (a config dataclass + a layer class), each registering
itself by ``adaptation_type`` name at the bottom of its file (``registry.register_method``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .base import AdapterLayer, add_low_rank
from .baselines import FullConfig, HeadConfig
from .dora import DoRAConfig, DoRALinear
from .dylora import DyLoRAConfig, DyLoRALinear, set_rank
from .inject import (
    ALL_LINEAR,
    DEFAULT_TARGET_MODULES,
    adapter_entry_names,
    adapter_layers,
    merge_adapters,
    merge_and_unload,
    replace_modules,
    resolve_target_modules,
    set_adapters_enabled,
    unmerge_adapters,
)
from .lora import LoRAConfig, LoRALinear
from .lora_fa import LoRAFAConfig, LoRAFALinear
from .lora_plus import LoRAPlusConfig, LSRPlusConfig
from .lsr import LSRConfig, LSRLinear, factorize
from .qlora import QLoRAConfig, QLoRALinear, logical_numel
from .registry import METHODS, AdapterMethod, get_method, register_method


def apply_adapter(model: nn.Module, adaptation_type: str, config: Mapping[str, Any] | Any | None = None,
                  target_modules=None, exclude=()) -> tuple[nn.Module, Any]:
    """Wrap the targeted layers of ``model`` with the named method; returns (model, method config)."""
    method = get_method(adaptation_type)
    cfg = method.make_config(config)
    if method.make_layer is not None:
        names = resolve_target_modules(model, target_modules, exclude)
        replace_modules(model, names, lambda base, name: method.make_layer(base, cfg, name))
    if method.prepare is not None:
        method.prepare(model, cfg)
    return model, cfg


def replace_linear_with_lora(model: nn.Module, target_modules=None, **options) -> nn.Module:
    """Wrap the targeted Linear/Conv1D layers with ``LoRALinear`` (in place); returns the model.
    ``options``: ``LoRAConfig`` fields (r, alpha, dropout, use_rslora), its defaults where not given."""
    return apply_adapter(model, "lora", LoRAConfig(**options), target_modules)[0]


def replace_linear_with_lsr(model: nn.Module, target_modules=None, **options) -> nn.Module:
    """Wrap the targeted Linear/Conv1D layers with ``LSRLinear`` (in place); returns the model.
    ``options``: ``LSRConfig`` fields (r, num_terms, alpha, ...), its defaults where not given."""
    return apply_adapter(model, "lsr", LSRConfig(**options), target_modules)[0]


__all__ = [
    "DoRAConfig", "DoRALinear", "DyLoRAConfig", "DyLoRALinear", "FullConfig", "HeadConfig", "LSRPlusConfig",
    "LoRAFAConfig", "LoRAFALinear", "LoRAPlusConfig", "QLoRAConfig", "QLoRALinear", "set_rank",
    "ALL_LINEAR", "DEFAULT_TARGET_MODULES", "METHODS", "AdapterLayer", "AdapterMethod", "LSRConfig",
    "LSRLinear", "LoRAConfig", "LoRALinear", "adapter_entry_names", "adapter_layers", "add_low_rank", "apply_adapter",
    "factorize", "get_method", "logical_numel", "merge_adapters", "merge_and_unload", "register_method",
    "replace_linear_with_lora", "replace_linear_with_lsr", "replace_modules", "resolve_target_modules",
    "set_adapters_enabled", "unmerge_adapters",
]
