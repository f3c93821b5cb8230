"""DyLoRA (Valipour et al. 2023, arXiv:2210.07558): one LoRA run that serves every rank b ≤ r.

Each training forward samples b ~ U{1, …, r} (one b for the whole model, drawn by a forward
pre-hook from torch's RNG, so runs are seeded; the layers read the stored b, so activation
checkpointing recomputes with the same b) and uses the first b rows of A and columns of B:

    h = W₀x + s_b · B[:, :b] · A[:b] · x,     s_b = α/b  (α/√b with use_rslora)

so every leading block of components learns to work on its own, and the trained adapter can be
evaluated, merged or exported at any rank b ≤ r (``eval_rank``, or ``set_rank(model, b)``).

Training masks rather than slices: A's rows past b are multiplied by zero, so every parameter
stays in the autograd graph (DDP needs no ``find_unused_parameters``; the unused rows get zero
gradients, exactly as slicing would give them) and shapes do not depend on b (torch.compile traces
one graph; b is a 0-dim tensor, not a Python int). Evaluation slices (cheapest, and exactly the
rank-b adapter).

Trainable parameters: r·(in + out), as LoRA at rank r (12,288 for 768 × 768 at r = 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LsrAdaptError
from . import fields
from .base import add_low_rank
from .inject import adapter_layers
from .lora import LoRAConfig, LoRALinear
from .registry import register_method


@dataclass
class DyLoRAConfig(LoRAConfig):
    """``r`` is the largest rank trained; ``eval_rank`` (None = r) the rank used outside training."""

    eval_rank: int | None = None
    eval_all_ranks: bool = False  # after training, evaluate every b = 1..r → results.json "rank_metrics"

    def __post_init__(self):
        super().__post_init__()
        fields.require(self, "eval_rank", self.eval_rank is None or fields.is_positive_int(self.eval_rank),
                       "must be an integer in 1..r, or null (= r)")
        fields.booleans(self, "eval_all_ranks")
        if self.eval_rank is not None and not 1 <= int(self.eval_rank) <= int(self.r):
            raise LsrAdaptError(f"DyLoRA eval_rank must be in 1..r={self.r}, got {self.eval_rank}")


class DyLoRALinear(LoRALinear):
    """LoRA of rank r trained at a random leading rank b per step; see the module doc.

    Trainable parameters: r·(in + out), as LoRA at rank r (``adapter_params``).
    """

    config_cls = DyLoRAConfig

    def __init__(self, base_layer: nn.Module, cfg: DyLoRAConfig | None = None, name: str = "", **values):
        super().__init__(base_layer, cfg, name, **values)
        self.set_rank(self.config.eval_rank or self.r)  # eval_rank: the rank used outside training
        # the rank of the current training step, set for all layers at once by the model's
        # forward pre-hook (``install_rank_sampler``); a layer used alone samples its own
        self.train_rank: torch.Tensor | None = None
        self.register_buffer("rank_index", torch.arange(1, self.r + 1, device=self.lora_A.device), persistent=False)

    def set_rank(self, b: int) -> None:
        b = int(b)
        if not 1 <= b <= self.r:
            raise LsrAdaptError(f"DyLoRA rank must be in 1..{self.r}, got {b}")
        self.eval_rank = b

    def rank_scaling(self, b):
        """s_b = α/b (α/√b with rsLoRA); b an int or a tensor."""
        if isinstance(b, torch.Tensor):
            return self.alpha / (b.sqrt() if self.use_rslora else b)
        return self.alpha / (math.sqrt(b) if self.use_rslora else b)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r_max={self.r}, eval_rank={self.eval_rank}"

    def delta_weight(self) -> torch.Tensor:
        """s_b · B[:, :b] · A[:b] at the evaluation rank b."""
        b = self.eval_rank
        return (self.lora_B[:, :b] @ self.lora_A[:b]) * self.rank_scaling(b)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            b = self.eval_rank
            return add_low_rank(self.base_layer(x), self.dropout(x), self.lora_A[:b], self.lora_B[:, :b].T,
                                self.rank_scaling(b))
        b = self.train_rank
        if b is None:
            b = torch.randint(1, self.r + 1, (), device=self.lora_A.device)
        # row weights (s_b, …, s_b, 0, …, 0): rows past b stay in the graph with zero gradient
        row_weight = (self.rank_index <= b).to(self.lora_A.dtype) * self.rank_scaling(b.to(self.lora_A.dtype))
        a = self.lora_A * row_weight[:, None]
        return add_low_rank(self.base_layer(x), self.dropout(x), a, self.lora_B.T, 1.0)


def dylora_layers(model: nn.Module) -> list[DyLoRALinear]:
    return [m for m in adapter_layers(model).values() if isinstance(m, DyLoRALinear)]


def set_rank(model: nn.Module, b: int) -> None:
    """Evaluate / merge every DyLoRA layer of ``model`` at rank b."""
    layers = dylora_layers(model)
    if not layers:
        raise LsrAdaptError("set_rank: the model has no DyLoRA layers")
    for layer in layers:
        layer.set_rank(b)


def install_rank_sampler(model: nn.Module, cfg: DyLoRAConfig) -> None:
    """One b ~ U{1..r} per training forward, shared by every DyLoRA layer (a forward pre-hook)."""
    if not dylora_layers(model):
        return
    r_max = int(cfg.r)

    def sample(module, args):
        if not module.training:
            return
        # layers looked up per call, not captured: a deep copy of the model samples for its own
        layers = [m for m in module.modules() if isinstance(m, DyLoRALinear)]
        if layers:
            b = torch.randint(1, r_max + 1, (), device=layers[0].lora_A.device)
            for layer in layers:
                layer.train_rank = b

    model.register_forward_pre_hook(sample)


def rank_metrics(model: nn.Module, cfg: DyLoRAConfig, evaluate) -> dict:
    """``after_train`` hook: {"eval_rank": b, "rank_metrics": {"1": metrics, …, "r": metrics}}."""
    layers = dylora_layers(model)
    out = {"eval_rank": layers[0].eval_rank if layers else None}
    if not cfg.eval_all_ranks or not layers:
        return out
    saved = {id(layer): layer.eval_rank for layer in layers}
    table = {}
    try:
        for b in range(1, int(cfg.r) + 1):
            set_rank(model, b)
            table[str(b)] = evaluate()
    finally:
        for layer in layers:
            layer.set_rank(saved[id(layer)])
    out["rank_metrics"] = table
    return out


register_method("dylora", make_layer=DyLoRALinear, prepare=install_rank_sampler, after_train=rank_metrics)
