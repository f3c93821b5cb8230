"""Adapter methods: one file per method, registered by ``adaptation_type`` name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .base import AdapterLayer, add_low_rank
from .baselines import FullConfig, HeadConfig
from .dora import DoRAConfig, DoRALinear
from .dylora import DyLoRAConfig, DyLoRALinear, install_rank_sampler, rank_metrics, set_rank
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
from .lora_fa import LoRAFAConfig, LoRAFALinear
from .lora_plus import LoRAPlusConfig, LSRPlusConfig, lora_plus_param_groups
from .lsr import LSRConfig, LSRLinear, factorize
from .qlora import (
    QLoRAConfig,
    QLoRALinear,
    qlora_training_args,
    quantize_frozen_linears,
    report_weight_memory,
)
from .registry import METHODS, AdapterMethod, get_method, register_method

register_method("lora", LoRAConfig, lambda base, cfg, name: LoRALinear.from_config(base, cfg),
                description="W + (α/r)·BA")
register_method("lsr", LSRConfig, lambda base, cfg, name: LSRLinear.from_config(base, cfg, name=name),
                description="W + s·Σᵢ (B₁ᵢ⊗B₂ᵢ)(A₁ᵢ⊗A₂ᵢ)")
# the LoRA family (docs/methods.md); methods that change only the optimizer reuse LoRA's / LSR's layers
register_method("dora", DoRAConfig, lambda base, cfg, name: DoRALinear.from_config(base, cfg),
                description="m ⊙ (W + s·BA) / ‖W + s·BA‖_row")
register_method("lora_plus", LoRAPlusConfig, lambda base, cfg, name: LoRALinear.from_config(base, cfg),
                description="LoRA with η_B = lr_ratio·η_A", param_groups=lora_plus_param_groups)
register_method("lsr_plus", LSRPlusConfig, lambda base, cfg, name: LSRLinear.from_config(base, cfg, name=name),
                description="LSR with η(B₁,B₂) = lr_ratio·η(A₁,A₂)", param_groups=lora_plus_param_groups)
register_method("lora_fa", LoRAFAConfig, lambda base, cfg, name: LoRAFALinear.from_config(base, cfg),
                description="LoRA with A frozen at init")
register_method("dylora", DyLoRAConfig, lambda base, cfg, name: DyLoRALinear.from_config(base, cfg),
                prepare=install_rank_sampler, after_train=rank_metrics,
                description="LoRA trained at a random leading rank b ≤ r per step")
register_method("qlora", QLoRAConfig, lambda base, cfg, name: QLoRALinear.from_config(base, cfg, name),
                prepare=quantize_frozen_linears, training_args=qlora_training_args,
                after_train=report_weight_memory, description="LoRA over a 4-bit NF4 frozen base")
register_method("full", FullConfig, description="every weight trains")
register_method("head", HeadConfig, description="only the task head trains")


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
                            alpha: float = 8.0, dropout: float = 0.0, form: str = "sum", path: str = "auto",
                            in_factors=None, out_factors=None) -> nn.Module:
    """Wrap the targeted Linear/Conv1D layers with ``LSRLinear`` (in place); returns the model."""
    cfg = LSRConfig(r, num_terms, alpha, dropout, form, path, in_factors, out_factors)
    return apply_adapter(model, "lsr", cfg, target_modules)[0]


__all__ = [
    "DoRAConfig", "DoRALinear", "DyLoRAConfig", "DyLoRALinear", "FullConfig", "HeadConfig", "LSRPlusConfig",
    "LoRAFAConfig", "LoRAFALinear", "LoRAPlusConfig", "QLoRAConfig", "QLoRALinear", "set_rank",
    "ALL_LINEAR", "DEFAULT_TARGET_MODULES", "METHODS", "AdapterLayer", "AdapterMethod", "LSRConfig",
    "LSRLinear", "LoRAConfig", "LoRALinear", "adapter_layers", "add_low_rank", "apply_adapter",
    "factorize", "get_method", "merge_adapters", "merge_and_unload", "register_method",
    "replace_linear_with_lora", "replace_linear_with_lsr", "replace_modules", "resolve_target_modules",
    "set_adapters_enabled", "unmerge_adapters",
]
