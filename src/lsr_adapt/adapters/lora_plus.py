"""LoRA+ (Hayou et al. 2024, arXiv:2402.12354): the output-side factor learns ``lr_ratio`` × faster.

The layers are unchanged (LoRA's, or LSR's for ``lsr_plus``); only the optimizer differs:

    η(B-side) = lr_ratio · η,    η(A-side, head, anything else trainable) = η

B-side and A-side are the roles adapter layers declare in ``a_params`` / ``b_params`` (LoRA: B /
A; LSR: B₁, B₂ / A₁, A₂), so the same groups serve every adapter that declares them. Weight decay
follows the Trainer's default split (none on biases and LayerNorm weights). Trainable parameters:
those of the underlying layer's ``adapter_params`` (LoRA: r·(in + out); LSR: t·r·(d₁ + d₂ + k₁ + k₂)).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import LsrAdaptError
from . import fields
from .inject import adapter_layers
from .lora import LoRAConfig, LoRALinear
from .lsr import LSRConfig, LSRLinear
from .registry import register_method


@dataclass
class LoRAPlusConfig(LoRAConfig):
    lr_ratio: float = 16.0  # η_B / η_A; the paper's default for RoBERTa / GPT-2 is 2^4

    def __post_init__(self):
        super().__post_init__()
        fields.positive_numbers(self, "lr_ratio")


@dataclass
class LSRPlusConfig(LSRConfig):
    lr_ratio: float = 16.0  # η(B₁, B₂) / η(A₁, A₂)
    alpha: float = 8.0  # the faster output side already does what LSR's α=64 does (docs/results.md)

    def __post_init__(self):
        super().__post_init__()
        fields.positive_numbers(self, "lr_ratio")


def b_side_parameter_names(model: nn.Module) -> set[str]:
    """Full names of every adapter layer's output-side (``b_params``) parameters."""
    return {f"{ln}.{pn}" for ln, layer in adapter_layers(model).items() for pn in layer.b_params}


def decay_parameter_names(model: nn.Module) -> set[str]:
    """The parameters the HF Trainer would decay (its default rule, so LoRA+ changes only the lr)."""
    from transformers import Trainer

    # an instance method that does not use the instance; calling it keeps one source of the rule
    return set(Trainer.get_decay_parameter_names(None, model))


def lora_plus_param_groups(model: nn.Module, cfg, lr: float, weight_decay: float) -> list[dict]:
    """Optimizer groups: B-side at ``lr · cfg.lr_ratio``, the rest at ``lr``; decay / no-decay split.

    Each group carries a ``name`` (``b``, ``b_no_decay``, ``other``, ``other_no_decay``) for logs and tests.
    """
    b_names = b_side_parameter_names(model)
    if not b_names:
        raise LsrAdaptError("LoRA+ found no adapter layer with B-side parameters (b_params) in the model")
    decay = decay_parameter_names(model)
    buckets: dict[str, list] = {"b": [], "b_no_decay": [], "other": [], "other_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = ("b" if name in b_names else "other") + ("" if name in decay else "_no_decay")
        buckets[key].append(p)
    ratio = float(cfg.lr_ratio)
    groups = []
    for key, params in buckets.items():
        if params:
            groups.append({"name": key, "params": params, "lr": lr * ratio if key.startswith("b") else lr,
                           "weight_decay": weight_decay if not key.endswith("no_decay") else 0.0})
    return groups


# methods that change only the optimizer reuse LoRA's / LSR's layers (and their adapter_params), with
# a config of their own: a subclass of the layer's config_cls
register_method("lora_plus", LoRAPlusConfig, LoRALinear,
                param_groups=lora_plus_param_groups)
register_method("lsr_plus", LSRPlusConfig, LSRLinear,
                param_groups=lora_plus_param_groups)
