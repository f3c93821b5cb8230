"""LoRA (Hu et al. 2021, arXiv:2106.09685), with the rsLoRA scaling option (Kalajdzievski 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import fields
from .base import AdapterLayer, add_low_rank
from .registry import register_method


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    use_rslora: bool = False  # scale α/√r instead of α/r (rank-stable, arXiv:2312.03732)

    def __post_init__(self):
        fields.positive_ints(self, "r")
        fields.positive_numbers(self, "alpha")
        fields.fraction(self, "dropout")
        fields.booleans(self, "use_rslora")


class LoRALinear(AdapterLayer):
    """h = W₀x + s·B·A·x with s = α/r (or α/√r with rsLoRA).

    A ∈ R^{r×in}: kaiming-uniform (a=√5) as in the reference implementation and peft.
    B ∈ R^{out×r}: zeros, so ΔW = s·B·A = 0 at the start.
    Trainable parameters: r·(in + out)  (12,288 for 768×768 at r=8): ``adapter_params``.
    """

    a_params = ("lora_A",)
    b_params = ("lora_B",)
    config_cls = LoRAConfig  # the LoRA family's layers take their own subclass of it

    @classmethod
    def adapter_params(cls, in_features: int, out_features: int, cfg: LoRAConfig, layer: str = "") -> int:
        """r·(in + out): A (r × in) and B (out × r)."""
        return int(cfg.r) * (in_features + out_features)

    def __init__(self, base_layer: nn.Module, cfg: LoRAConfig | None = None, name: str = "", **values):
        """``cfg`` (the method's config dataclass), or its fields as keywords (``r=8, alpha=16``)."""
        super().__init__(base_layer)
        self.config = cfg = cfg if cfg is not None else self.config_cls(**values)
        self.r = int(cfg.r)
        self.alpha = float(cfg.alpha)
        self.use_rslora = bool(cfg.use_rslora)
        self.scaling = self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in) -> (out, in)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_low_rank(self.base_layer(x), self.dropout(x), self.lora_A, self.lora_B.T, self.scaling)


register_method("lora", make_layer=LoRALinear)  # config: LoRALinear.config_cls
