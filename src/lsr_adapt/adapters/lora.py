"""LoRA (Hu et al. 2021, arXiv:2106.09685), with the rsLoRA scaling option (Kalajdzievski 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import AdapterLayer, add_low_rank


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    use_rslora: bool = False  # scale α/√r instead of α/r (rank-stable, arXiv:2312.03732)

    def __post_init__(self):
        if int(self.r) < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")


class LoRALinear(AdapterLayer):
    """h = W₀x + s·B·A·x with s = α/r (or α/√r with rsLoRA).

    A ∈ R^{r×in}: kaiming-uniform (a=√5) as in the reference implementation and peft.
    B ∈ R^{out×r}: zeros, so ΔW = s·B·A = 0 at the start.
    Trainable parameters: r·(in + out)  (12,288 for 768×768 at r=8).
    """

    a_params = ("lora_A",)
    b_params = ("lora_B",)

    def __init__(self, base_layer: nn.Module, r: int = 8, alpha: float = 8.0, dropout: float = 0.0,
                 use_rslora: bool = False):
        super().__init__(base_layer)
        LoRAConfig(r=r, alpha=alpha, dropout=dropout, use_rslora=use_rslora)  # validates
        self.r = int(r)
        self.alpha = float(alpha)
        self.use_rslora = bool(use_rslora)
        self.scaling = self.alpha / (math.sqrt(self.r) if use_rslora else self.r)
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, r) @ (r, in) -> (out, in)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_low_rank(self.base_layer(x), self.dropout(x), self.lora_A, self.lora_B.T, self.scaling)

    @classmethod
    def from_config(cls, base_layer: nn.Module, cfg: LoRAConfig) -> LoRALinear:
        return cls(base_layer, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, use_rslora=cfg.use_rslora)
