"""QLoRA (Dettmers et al. 2023, arXiv:2305.14314): LoRA over a frozen base stored in 4 bits.

Every frozen Linear of the encoder (the layers LoRA wraps and all the others; not the task head,
which trains) is replaced by a bitsandbytes ``Linear4bit``:

    W₀ ≈ NF4 code[q] · absmax_block,   q ∈ {0..15} per weight (2 per byte), one absmax per 64 weights;
    double quantisation stores each absmax in 8 bits with an fp32 scale per 256 absmax values,

    so a weight costs 0.5 + 1/64 + 4/(64·256) ≈ 0.516 bytes instead of 4 (fp32).

The forward dequantises block by block inside ``bnb.matmul_4bit`` (compute in ``compute_dtype``)
and adds LoRA in its own precision (fp32 parameters):

    h = dequant(W₀)·x + b + s·B·A·x

Trainable parameters: LoRA's, r·(in + out) per wrapped layer. ``paged_optimizer`` makes the
Trainer use bitsandbytes' paged AdamW (optimizer state in unified memory that pages to the host
under memory pressure; on CPU bitsandbytes falls back to the ordinary update).

Merging dequantises, adds ΔW and re-quantises (lossy, by one quantisation step, as in peft);
unmerge puts the original 4-bit weight back exactly.

bitsandbytes ≥ 0.50 runs all of this on CPU too (its CPU backend); the CPU tests check it against
a from-scratch NF4 reference. One defect found doing so: its CPU kernels dequantize a weight whose
row length (in_features) is not a multiple of ``blocksize`` wrongly (blocks that straddle rows get
another block's scale; bitsandbytes 0.50.2), so on CPU such a layer is refused with a one-line
error (RoBERTa's 768 / 3072 are multiples of 64; the tiny smoke models need ``blocksize=32``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LsrAdaptError, first_line
from . import fields
from .base import Conv1D
from .inject import _candidate_layers, replace_modules
from .lora import LoRAConfig, LoRALinear
from .registry import register_method

MIN_CPU_BITSANDBYTES = "0.50"  # the version whose CPU backend the tests were run against
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("auto", "fp32", "bf16", "fp16")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass
class QLoRAConfig(LoRAConfig):
    quant_type: str = "nf4"  # nf4 (the paper's NormalFloat) | fp4
    double_quant: bool = True  # quantise the per-block absmax too (≈0.37 bits/weight saved)
    blocksize: int = 64
    compute_dtype: str = "auto"  # auto = bf16 on CUDA (fp16 without bf16), fp32 on CPU | fp32 | bf16 | fp16
    paged_optimizer: bool = False  # bitsandbytes paged AdamW (32-bit state)

    def __post_init__(self):
        super().__post_init__()
        fields.positive_ints(self, "blocksize")
        fields.booleans(self, "double_quant", "paged_optimizer")
        if self.quant_type not in QUANT_TYPES:
            raise LsrAdaptError(f"unknown QLoRA quant_type {self.quant_type!r}; valid choices: {', '.join(QUANT_TYPES)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise LsrAdaptError(
                f"unknown QLoRA compute_dtype {self.compute_dtype!r}; valid choices: {', '.join(COMPUTE_DTYPES)}")
        if int(self.blocksize) not in BLOCKSIZES:
            raise LsrAdaptError(
                f"unsupported QLoRA blocksize {self.blocksize}; valid choices: {', '.join(map(str, BLOCKSIZES))}")

    def torch_compute_dtype(self) -> torch.dtype:
        name = self.compute_dtype
        if name == "auto":
            if not torch.cuda.is_available():
                return torch.float32
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def bitsandbytes():
    """The ``bitsandbytes`` module, or a one-line ``LsrAdaptError`` saying what to install."""
    try:
        import bitsandbytes as bnb
    except Exception as e:  # ImportError, or a broken native library
        reason = first_line(e)
        raise LsrAdaptError(
            f"adaptation_type=qlora needs bitsandbytes (pip install 'lsr-adapt[qlora]'); importing it failed: {reason}"
        ) from None
    if not torch.cuda.is_available() and _version(bnb.__version__) < _version(MIN_CPU_BITSANDBYTES):
        raise LsrAdaptError(
            f"adaptation_type=qlora without CUDA needs bitsandbytes>={MIN_CPU_BITSANDBYTES} (its CPU backend); "
            f"found {bnb.__version__}: upgrade it or run on a CUDA device"
        )
    return bnb


def _version(v: str) -> tuple[int, ...]:
    parts = []
    for piece in v.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _as_linear(layer: nn.Module) -> nn.Linear:
    """nn.Linear as is; a GPT-2 Conv1D (weight in × out) as the equivalent nn.Linear."""
    if isinstance(layer, nn.Linear):
        return layer
    if Conv1D and isinstance(layer, Conv1D):
        in_f, out_f = layer.weight.shape
        lin = nn.Linear(in_f, out_f, bias=layer.bias is not None, device="meta")
        lin.weight = nn.Parameter(layer.weight.detach().T.contiguous(), requires_grad=False)
        if layer.bias is not None:
            lin.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        return lin
    raise TypeError(f"cannot quantize a {type(layer).__name__}; supported: nn.Linear, transformers Conv1D")


def _quantized_param(w: torch.Tensor, cfg: QLoRAConfig, module: nn.Module, device) -> nn.Parameter:
    bnb = bitsandbytes()
    param = bnb.nn.Params4bit(w.detach().float().contiguous(), requires_grad=False, blocksize=int(cfg.blocksize),
                              compress_statistics=bool(cfg.double_quant), quant_type=cfg.quant_type, module=module)
    return param.to(device)  # moving an unquantized Params4bit is what quantizes it


def quantize_linear(layer: nn.Module, cfg: QLoRAConfig, name: str = "") -> nn.Module:
    """A frozen ``bnb.nn.Linear4bit`` holding ``layer``'s weight in 4 bits (bias kept as is, frozen)."""
    bnb = bitsandbytes()
    lin = _as_linear(layer)
    # quantize where the weight is, so the model stays on one device (train() quantizes on CPU and
    # the Trainer then moves the 4-bit weights with the rest; the layout is the same on every device)
    device = lin.weight.device
    # CPU *quantization* is right for any shape; the CPU *dequantization* is what is wrong, so a model
    # quantized here and trained on CUDA (train() on a GPU machine) is fine
    if device.type == "cpu" and not torch.cuda.is_available() and lin.in_features % int(cfg.blocksize):
        raise LsrAdaptError(
            f"QLoRA on CPU: bitsandbytes {bnb.__version__} dequantizes wrongly when in_features "
            f"({lin.in_features}, layer {name or '?'}) is not a multiple of blocksize ({cfg.blocksize}); set "
            f"model.qlora.blocksize to one that divides it (32 for the tiny smoke models) or run on CUDA"
        )
    q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                          compute_dtype=cfg.torch_compute_dtype(), compress_statistics=bool(cfg.double_quant),
                          quant_type=cfg.quant_type, device="meta")
    q.weight = _quantized_param(lin.weight, cfg, q, device)
    if lin.bias is not None:
        q.bias = nn.Parameter(lin.bias.detach().to(device), requires_grad=False)
    # bitsandbytes' CPU inference fast path repacks the weight in place (un-nested fp32 absmax): it
    # would change the memory reported and the layout ``dequantize`` reads, so keep the standard one
    q.support_avx512bf16_for_cpu = False
    return q


def dequantize(weight: torch.Tensor) -> torch.Tensor:
    """The dense (out × in) weight a ``Params4bit`` stands for."""
    return bitsandbytes().functional.dequantize_4bit(weight.data, weight.quant_state)


class QLoRALinear(LoRALinear):
    """LoRA (fp32 ``lora_A`` / ``lora_B``) around a frozen 4-bit ``Linear4bit``; see the module doc.

    Trainable parameters: LoRA's r·(in + out) (``adapter_params``); the 4-bit base is not counted.
    """

    config_cls = QLoRAConfig

    def __init__(self, base_layer: nn.Module, cfg: QLoRAConfig | None = None, name: str = "", **values):
        cfg = cfg if cfg is not None else self.config_cls(**values)
        lin = _as_linear(base_layer)
        # LoRA's factors take the dtype of the float weight, before it is quantized away
        super().__init__(lin, cfg, name)
        self.base_layer = quantize_linear(lin, cfg, name)
        self.fan_in_fan_out = False
        self.quant_config = cfg

    def base_weight(self) -> torch.Tensor:
        return dequantize(self.base_layer.weight).to(self.lora_A.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, quant={self.quant_config.quant_type}"

    @torch.no_grad()
    def merge(self) -> None:
        """Re-quantize W₀ + ΔW (lossy by one quantisation step); the 4-bit original is kept for unmerge."""
        if self.merged:
            return
        merged = self.base_weight().float() + self.delta_weight().float()
        if not torch.isfinite(merged).all():
            raise ValueError(f"refusing to merge a non-finite ΔW into a {self.out_features}×{self.in_features} layer")
        old = self.base_layer.weight
        self._unmerged_weight = old
        self.base_layer.weight = _quantized_param(merged, self.quant_config, self.base_layer, old.device)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base_layer.weight = self._unmerged_weight
        self.base_layer.quant_state = self._unmerged_weight.quant_state
        self._unmerged_weight = None
        self.merged = False


def quantize_frozen_linears(model: nn.Module, cfg: QLoRAConfig) -> None:
    """``prepare`` hook: quantize every Linear of the encoder that LoRA did not wrap (not the head).

    The encoder is ``model.<base_model_prefix>``; layers outside it (the task head) stay in full
    precision because they train.
    """
    bnb = bitsandbytes()
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or getattr(model, prefix, None) is None:
        return  # no separable encoder: only the wrapped layers are quantized
    names = [n for n, m in _candidate_layers(model).items()
             if n.startswith(prefix + ".") and not isinstance(m, bnb.nn.Linear4bit)]
    replace_modules(model, names, lambda m, n: quantize_linear(m, cfg, n))


def _tensor_bytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _quant_state_bytes(qs) -> int:
    total = sum(_tensor_bytes(getattr(qs, k, None)) for k in ("absmax", "code", "offset"))
    if getattr(qs, "state2", None) is not None:
        total += sum(_tensor_bytes(getattr(qs.state2, k, None)) for k in ("absmax", "code"))
    return total


def logical_numel(p: torch.Tensor) -> int:
    """Number of weights a parameter holds; a bitsandbytes 4-bit weight stores two per byte element."""
    quant_state = getattr(p, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None else p.numel()


def weight_memory(model: nn.Module) -> dict:
    """Bytes held by the frozen weights: the 4-bit Linear weights (codes + all quantisation
    statistics) and every frozen parameter of the model (embeddings and LayerNorms stay fp32)."""
    q_params = q_bytes = 0
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            q_params += qs.shape.numel()
            q_bytes += _tensor_bytes(p.data) + _quant_state_bytes(qs)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    f_params = sum(logical_numel(p) for p in frozen)
    f_bytes = sum(_tensor_bytes(p.data) + _quant_state_bytes(getattr(p, "quant_state", None)) for p in frozen)
    return {
        "quantized_params": q_params,
        "quantized_bytes": q_bytes,
        "bytes_per_quantized_param": round(q_bytes / q_params, 4) if q_params else None,
        "frozen_params": f_params,
        "frozen_bytes": f_bytes,
        "bytes_per_frozen_param": round(f_bytes / f_params, 4) if f_params else None,
    }


def report_weight_memory(model: nn.Module, cfg: QLoRAConfig, evaluate=None) -> dict:
    """``after_train`` hook: ``results.json["base_weight_memory"]``."""
    return {"base_weight_memory": {**weight_memory(model), "quant_type": cfg.quant_type,
                                   "double_quant": bool(cfg.double_quant), "blocksize": int(cfg.blocksize),
                                   "compute_dtype": str(cfg.torch_compute_dtype()).removeprefix("torch.")}}


def qlora_training_args(cfg: QLoRAConfig) -> dict:
    """``training_args`` hook: the paged optimizer, when asked for."""
    return {"optim": "paged_adamw_32bit"} if cfg.paged_optimizer else {}


register_method("qlora", make_layer=QLoRALinear, prepare=quantize_frozen_linears, training_args=qlora_training_args,
                after_train=report_weight_memory)
