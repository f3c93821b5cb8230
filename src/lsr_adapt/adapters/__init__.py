"""Adapter methods: one file per method, registered by ``adaptation_type`` name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .base import AdapterLayer, add_low_rank
from .inject import (
    ALL_LINEAR,
    DEFAULT_TARGET_MODULES,
    adapter_layers,
    merge_adapters,
    merge_and_unload,
    replace_modules,
    resolve_target_modules,
    set_adapters_enabled,
    unmerge_adapters,
)
from .lora import LoRAConfig, LoRALinear
from .lsr import LSRConfig, LSRLinear, factorize
from .registry import METHODS, AdapterMethod, get_method, register_method

register_method("lora", LoRAConfig, lambda base, cfg, name: LoRALinear.from_config(base, cfg),
                description="W + (α/r)·BA")
register_method("lsr", LSRConfig, lambda base, cfg, name: LSRLinear.from_config(base, cfg, name=name),
                description="W + s·Σᵢ (B₁ᵢ⊗B₂ᵢ)(A₁ᵢ⊗A₂ᵢ)")


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


def replace_linear_with_lora(model: nn.Module, target_modules=None, r: int = 8, alpha: float = 8.0,
                             dropout: float = 0.0, use_rslora: bool = False) -> nn.Module:
    """Wrap the targeted Linear/Conv1D layers with ``LoRALinear`` (in place); returns the model."""
    return apply_adapter(model, "lora", LoRAConfig(r, alpha, dropout, use_rslora), target_modules)[0]


def replace_linear_with_lsr(model: nn.Module, target_modules=None, r: int = 2, num_terms: int = 16,
                            alpha: float = 2.0, dropout: float = 0.0, form: str = "sum", path: str = "auto",
                            in_factors=None, out_factors=None) -> nn.Module:
    """Wrap the targeted Linear/Conv1D layers with ``LSRLinear`` (in place); returns the model."""
    cfg = LSRConfig(r, num_terms, alpha, dropout, form, path, in_factors, out_factors)
    return apply_adapter(model, "lsr", cfg, target_modules)[0]


__all__ = [
    "ALL_LINEAR", "DEFAULT_TARGET_MODULES", "METHODS", "AdapterLayer", "AdapterMethod", "LSRConfig",
    "LSRLinear", "LoRAConfig", "LoRALinear", "adapter_layers", "add_low_rank", "apply_adapter",
    "factorize", "get_method", "merge_adapters", "merge_and_unload", "register_method",
    "replace_linear_with_lora", "replace_linear_with_lsr", "replace_modules", "resolve_target_modules",
    "set_adapters_enabled", "unmerge_adapters",
]
