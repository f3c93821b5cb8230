"""The peft file format: export LoRA / rsLoRA / DoRA exactly, LSR as LoKr (one term) or as an SVD LoRA,
and import peft LoRA adapters. Written without importing peft, so exports need no peft install.

peft adapter directory: ``adapter_config.json`` (``peft_type``, ``task_type``, hyperparameters,
``target_modules``, ``modules_to_save``) and ``adapter_model.safetensors`` whose keys are the
model's module names under ``base_model.model.``:

* LoRA: ``<layer>.lora_A.weight`` (r × in), ``<layer>.lora_B.weight`` (out × r), ΔW = s·B·A with
  s = lora_alpha/r (``use_rslora``: lora_alpha/√r); DoRA adds ``<layer>.lora_magnitude_vector`` (out).
* LoKr: ΔW = (alpha/r)·(W₁ ⊗ W₂) with W₁ (k₁ × d₁) stored whole as ``lokr_w1`` or as
  ``lokr_w1_a`` (k₁ × r) · ``lokr_w1_b`` (r × d₁), and W₂ (k₂ × d₂) as ``lokr_w2`` or
  ``lokr_w2_a`` · ``lokr_w2_b``; which form peft builds is fixed by r (see ``_lokr_uses_full``)
  and the factor sizes by ``decompose_factor`` (see ``peft_factorization``).
* the task head (``modules_to_save``): ``<module>.<param>`` under its plain name.

A run directory of a method with an exact peft LoRA form is itself a peft directory
(``save_run_adapter``; the peft layout of ``format``); ``export`` writes the other forms.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch
from torch import nn

from ..adapters import METHODS, adapter_entry_names, adapter_layers
from ..adapters.dora import DoRALinear
from ..adapters.lora import LoRALinear
from ..adapters.lsr import LSRLinear
from ..errors import LsrAdaptError
from .format import PEFT_PREFIX, Artifact, adapter_state, save_adapter, to_peft_name

log = logging.getLogger(__name__)

PREFIX = PEFT_PREFIX
SUPPORTED_IMPORT = ("LORA",)


# -- export ----------------------------------------------------------------------------------------
def modules_to_save(model: nn.Module, head_names) -> list[str]:
    """The smallest set of modules whose parameters are exactly the trained head tensors."""
    head = set(head_names)
    params_of = {}
    for mname, module in model.named_modules():
        if mname:
            params_of[mname] = {f"{mname}.{p}" for p, _ in module.named_parameters()}
    chosen = set()
    for name in sorted(head):
        parts = name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if params_of.get(prefix) and params_of[prefix] <= head:
                chosen.add(prefix)
                break
        else:
            raise LsrAdaptError(f"trained tensor {name} is part of a module whose other weights are frozen; "
                                f"peft's modules_to_save saves whole modules, so this adapter has no peft form")
    return sorted(chosen)


def _head_tensors(model: nn.Module, meta: dict) -> tuple[dict, list[str]]:
    state = model.state_dict()
    head = [n for n in meta.get("trained_head", []) if n in state]
    mods = modules_to_save(model, head)
    wrapped = adapter_layers(model)
    for m in mods:
        if any(m == w or w.startswith(m + ".") or m.startswith(w + ".") for w in wrapped):
            raise LsrAdaptError(f"trained module {m} overlaps the adapted layers; peft cannot express that")
    tensors = {}
    for m in mods:
        for k, v in model.get_submodule(m).state_dict().items():
            tensors[f"{PREFIX}{m}.{k}"] = v.detach().cpu().contiguous()
    return tensors, mods


# lsr-adapt task type -> peft's: the model class ``PeftModel`` rebuilds around the adapter
PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}


def _base_config(meta: dict, layers, mods: list[str]) -> dict:
    return {
        "task_type": PEFT_TASK_TYPES.get(meta.get("task_type"), "SEQ_CLS"),
        "base_model_name_or_path": meta.get("base_model"),
        "target_modules": sorted(layers),
        "modules_to_save": mods,
        "inference_mode": True,
    }


def is_dora(layer: nn.Module) -> bool:
    return isinstance(layer, DoRALinear)


def _lora_delta(layer, a: torch.Tensor, b: torch.Tensor, magnitude: torch.Tensor | None) -> torch.Tensor:
    """ΔW as peft computes it from exported tensors: s·B·A, or for DoRA m/‖W₀+s·B·A‖_row ⊙ (W₀+s·B·A) − W₀."""
    delta = (b.double() @ a.double()) * layer.scaling
    if magnitude is None:
        return delta
    w = layer.base_weight().detach().cpu().double()
    adapted = w + delta
    return (magnitude.double() / torch.linalg.vector_norm(adapted, dim=1))[:, None] * adapted - w


def check_exact(layers: dict, rebuilt: dict, what: str) -> None:
    """Refuse an "exact" export whose tensors do not reproduce each layer's own ΔW (a LoRA subclass
    with another update rule, say): ‖ΔW_export − ΔW‖ ≤ 1e-5·‖ΔW‖ + 1e-7 per layer."""
    with torch.no_grad():
        for name, layer in layers.items():
            want = layer.delta_weight().detach().cpu().double()
            err = torch.linalg.matrix_norm(rebuilt[name] - want).item()
            if err > 1e-5 * torch.linalg.matrix_norm(want).item() + 1e-7:
                raise LsrAdaptError(f"layer {name} ({type(layer).__name__}) is not exactly a {what}; "
                                    f"use --format lora --rank R (SVD, error reported) or --format merged")


def peft_lora(model: nn.Module, meta: dict) -> tuple[dict, dict]:
    """(adapter_config, tensors) of the model's LoRA / rsLoRA / DoRA adapter in peft's format (exact)."""
    layers = adapter_layers(model)
    other = sorted({type(layer).__name__ for layer in layers.values() if not isinstance(layer, LoRALinear)})
    if not layers or other:
        raise LsrAdaptError(
            f"--format peft exports LoRA, rsLoRA and DoRA adapters; this one is {meta.get('adaptation_type')!r} "
            f"({', '.join(other) or 'no adapter layers'}): use --format lokr (single-term LSR), "
            f"--format lora --rank R (any method, by SVD) or --format merged")
    first = next(iter(layers.values()))
    hyper = {(layer.r, layer.alpha, layer.use_rslora, is_dora(layer)) for layer in layers.values()}
    if len(hyper) > 1:
        raise LsrAdaptError("layers with different LoRA ranks or alphas cannot share one peft config")
    tensors, mods = _head_tensors(model, meta)
    rebuilt = {}
    for name, layer in layers.items():
        a, b = layer.lora_A.detach().cpu().contiguous(), layer.lora_B.detach().cpu().contiguous()
        tensors[f"{PREFIX}{name}.lora_A.weight"], tensors[f"{PREFIX}{name}.lora_B.weight"] = a, b
        mag = layer.lora_magnitude.detach().reshape(-1).cpu().contiguous() if is_dora(layer) else None
        if mag is not None:
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = mag
        rebuilt[name] = _lora_delta(layer, a, b, mag)
    check_exact(layers, rebuilt, "DoRA" if is_dora(first) else "LoRA")
    dropout = float((meta.get("method_config") or {}).get("dropout", 0.0))
    config = {
        "peft_type": "LORA", **_base_config(meta, layers, mods),
        "r": first.r, "lora_alpha": first.alpha, "lora_dropout": dropout, "use_rslora": first.use_rslora,
        "use_dora": is_dora(first), "fan_in_fan_out": first.fan_in_fan_out, "bias": "none",
        "init_lora_weights": True,
    }
    return config, tensors


def run_peft_config(model: nn.Module, meta: dict) -> tuple[dict | None, str]:
    """(peft's LoRA config, "") when the adapter's files can be peft's as they are: ``peft_lora``
    reproduces every layer's ΔW exactly and its tensors are exactly the adapter file's under peft's
    names (adapter entries + whole head modules); else (None, why not)."""
    if meta.get("adaptation_type") == "qlora":
        # peft's LoRA would load onto whatever base the user passes; the 4-bit base this adapter was
        # trained against is not in a peft config (export --format merged holds it)
        return None, "a QLoRA adapter is trained against a 4-bit base that a peft config does not record"
    if meta.get("pooling") == "mean":
        return None, "the head reads the mean of the last hidden states, which peft's stock head does not"
    tensors = adapter_state(model)
    adapter_names = adapter_entry_names(model)
    head = sorted(n for n in tensors if n not in adapter_names)
    try:
        config, peft_tensors = peft_lora(model, {**meta, "trained_head": head})
    except LsrAdaptError as e:
        return None, str(e)
    ours = {to_peft_name(n, adapter_names): t for n, t in tensors.items()}
    if set(ours) != set(peft_tensors) or not all(torch.equal(ours[k], peft_tensors[k]) for k in ours):
        extra = sorted(set(ours) ^ set(peft_tensors))
        return None, f"peft's LoRA files would hold other tensors than the adapter's ({', '.join(extra[:3])})"
    return config, ""


def save_run_adapter(model: nn.Module, out_dir, meta: dict) -> Path:
    """A run's adapter files: the peft layout (``PeftModel.from_pretrained(base, run_dir)`` opens it)
    when the adapter has an exact peft LoRA form, lsr-adapt's layout otherwise (``format``)."""
    config, why_not = run_peft_config(model, meta)
    if config is None:
        log.debug("adapter saved in lsr-adapt's layout, not peft's: %s", why_not)
    return save_adapter(model, out_dir, meta, peft_config=config)


def peft_factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """peft's (LyCORIS') split of a LoKr dimension: (factor, dim/factor) if factor divides it, else
    the most balanced (m, n), m ≤ n, with m ≤ factor (``peft.tuners.lokr.layer.factorization``)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def _lokr_uses_full(r: int, rows: int, cols: int) -> bool:
    """peft builds a Kronecker factor whole unless r < max(rows, cols)/2 (then as a rank-r product)."""
    return not (r < max(rows, cols) / 2)


def peft_lokr(model: nn.Module, meta: dict) -> tuple[dict, dict]:
    """(adapter_config, tensors) of a single-term LSR adapter as peft LoKr: exact.

    One term: ΔW = s·(B₁A₁) ⊗ (B₂A₂) (sum form; the product form with t = 1 is the same by the
    mixed-product rule), i.e. LoKr's W₁ = s·B₁A₁ (k₁ × d₁), W₂ = B₂A₂ (k₂ × d₂) with peft's
    alpha = r (scale 1). W₁ is stored as lokr_w1_a = s·B₁, lokr_w1_b = A₁ (``decompose_both``) and
    W₂ as lokr_w2_a = B₂, lokr_w2_b = A₂ where peft keeps those factors, whole otherwise.
    """
    layers = adapter_layers(model)
    if not layers or not all(isinstance(layer, LSRLinear) for layer in layers.values()):
        raise LsrAdaptError(f"--format lokr exports single-term LSR adapters; this one is "
                            f"{meta.get('adaptation_type')!r}: use --format peft, lora --rank R or merged")
    multi = sorted({layer.num_terms for layer in layers.values() if layer.num_terms != 1})
    if multi:
        raise LsrAdaptError(f"--format lokr is exact only for single-term LSR (num_terms=1); this adapter has "
                            f"num_terms={multi[0]}: use --format lora --rank R (SVD, error reported) or merged")
    not_linear = [n for n, layer in layers.items() if not isinstance(layer.base_layer, nn.Linear)]
    if not_linear:
        raise LsrAdaptError(f"peft LoKr adapts nn.Linear layers only; {not_linear[0]} is a "
                            f"{type(layers[not_linear[0]].base_layer).__name__}: use --format lora --rank R")
    ranks = {layer.r for layer in layers.values()}
    if len(ranks) > 1:
        raise LsrAdaptError(f"layers with different LSR ranks {sorted(ranks)} cannot share one peft LoKr config")
    r = ranks.pop()
    candidates = [-1] + sorted({f for layer in layers.values() for f in (layer.k1, layer.d1, layer.k2, layer.d2)})
    factor = next((f for f in candidates if all(
        peft_factorization(layer.out_features, f) == (layer.k1, layer.k2)
        and peft_factorization(layer.in_features, f) == (layer.d1, layer.d2) for layer in layers.values())), None)
    if factor is None:
        shapes = sorted({f"out {layer.k1}x{layer.k2}, in {layer.d1}x{layer.d2}" for layer in layers.values()})
        raise LsrAdaptError(f"no single peft LoKr decompose_factor reproduces the Kronecker factors "
                            f"({'; '.join(shapes)}): use --format lora --rank R")
    tensors, mods = _head_tensors(model, meta)
    rebuilt = {}
    for name, layer in layers.items():
        a1, a2 = layer.lsr_A1[0].detach().cpu(), layer.lsr_A2[0].detach().cpu()  # (r, d₁), (r, d₂)
        b1, b2 = layer.lsr_B1[0].detach().cpu(), layer.lsr_B2[0].detach().cpu()  # (k₁, r), (k₂, r)
        key = f"{PREFIX}{name}."
        if _lokr_uses_full(r, layer.k1, layer.d1):
            tensors[key + "lokr_w1"] = (layer.scaling * b1) @ a1
        else:
            tensors[key + "lokr_w1_a"], tensors[key + "lokr_w1_b"] = layer.scaling * b1, a1.clone()
        if _lokr_uses_full(r, layer.k2, layer.d2):
            tensors[key + "lokr_w2"] = b2 @ a2
        else:
            tensors[key + "lokr_w2_a"], tensors[key + "lokr_w2_b"] = b2.clone(), a2.clone()
        w1, w2 = (tensors[f"{key}lokr_w{i}"] if f"{key}lokr_w{i}" in tensors
                  else tensors[f"{key}lokr_w{i}_a"] @ tensors[f"{key}lokr_w{i}_b"] for i in (1, 2))
        rebuilt[name] = torch.kron(w1.double(), w2.double())
    check_exact(layers, rebuilt, "single-term Kronecker product")
    config = {
        "peft_type": "LOKR", **_base_config(meta, layers, mods),
        "r": r, "alpha": r, "rank_dropout": 0.0, "module_dropout": 0.0, "decompose_both": True,
        "decompose_factor": factor, "use_effective_conv2d": False, "init_weights": True,
        "rank_dropout_scale": False,
    }
    return config, {k: v.contiguous() for k, v in tensors.items()}


def exact_lora_rank(model: nn.Module) -> tuple[int, str]:
    """(R, how): the rank an SVD LoRA needs to reproduce every layer's ΔW exactly, from the method's
    structure (LSR: t·r² in the sum form, r² in the product form; LoRA and its variants with ΔW = s·BA:
    r), capped by min(out, in); a method without a low-rank bound (DoRA, ...) is an error."""
    layers = adapter_layers(model)
    if not layers:
        raise LsrAdaptError("this adapter has no adapter layers to factor; use --format merged")
    best = (0, "")
    for name, layer in layers.items():
        if isinstance(layer, LSRLinear):
            t, r = layer.num_terms, layer.r
            bound, how = (t * r * r, f"t·r² = {t}·{r}²") if layer.form == "sum" else (r * r, f"r² = {r}² (product form)")
        elif isinstance(layer, LoRALinear) and not is_dora(layer):
            bound, how = layer.r, f"r = {layer.r}"
        else:
            raise LsrAdaptError(f"--format lora needs --rank R for layer {name} ({type(layer).__name__}): its ΔW "
                                f"has no low-rank bound (rank up to min(out, in) = "
                                f"{min(layer.in_features, layer.out_features)})")
        full = min(layer.in_features, layer.out_features)
        if full < bound:
            bound, how = full, f"min(out, in) = {full}, as {how} = {bound} exceeds it"
        best = max(best, (bound, how), key=lambda x: x[0])
    return best


def svd_lora(model: nn.Module, meta: dict, rank: int) -> tuple[dict, dict, dict]:
    """(adapter_config, tensors, report): each layer's ΔW truncated to rank R by SVD, as a peft LoRA.

    ΔW = U·diag(σ)·Vᵀ → B = U_R·diag(√σ_R), A = diag(√σ_R)·V_Rᵀ, lora_alpha = R (scale 1). By
    Eckart–Young this is the best rank-R approximation; the report gives each layer's relative
    Frobenius error ‖ΔW − BA‖/‖ΔW‖ (= √(Σ_{i>R} σᵢ²)/‖ΔW‖) and the total over all layers.
    """
    layers = adapter_layers(model)
    if not layers:
        raise LsrAdaptError(f"this adapter ({meta.get('adaptation_type')!r}) has no adapter layers to factor; "
                            f"use --format merged")
    if rank < 1:
        raise LsrAdaptError(f"--rank must be >= 1, got {rank}")
    too_small = [n for n, layer in layers.items() if rank > min(layer.in_features, layer.out_features)]
    if too_small:
        layer = layers[too_small[0]]
        raise LsrAdaptError(f"--rank {rank} exceeds min(out, in) = {min(layer.in_features, layer.out_features)} "
                            f"of layer {too_small[0]}")
    tensors, mods = _head_tensors(model, meta)
    per_layer, err2, norm2 = {}, 0.0, 0.0
    with torch.no_grad():
        for name, layer in layers.items():
            delta = layer.delta_weight().detach().to("cpu", torch.float64)
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            root = s[:rank].sqrt()
            b = (u[:, :rank] * root).to(torch.float32)
            a = (root[:, None] * vh[:rank]).to(torch.float32)
            resid = torch.linalg.matrix_norm(delta - b.double() @ a.double()).item()
            total = torch.linalg.matrix_norm(delta).item()
            per_layer[name] = {"relative_error": resid / total if total > 0 else 0.0,
                               "norm": total, "numerical_rank": int((s > s[0] * 1e-6).sum()) if total > 0 else 0}
            err2, norm2 = err2 + resid**2, norm2 + total**2
            tensors[f"{PREFIX}{name}.lora_A.weight"] = a.contiguous()
            tensors[f"{PREFIX}{name}.lora_B.weight"] = b.contiguous()
    first = next(iter(layers.values()))
    config = {
        "peft_type": "LORA", **_base_config(meta, layers, mods),
        "r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "use_rslora": False, "use_dora": False,
        "fan_in_fan_out": first.fan_in_fan_out, "bias": "none", "init_lora_weights": True,
    }
    report = {
        "rank": rank,
        "relative_error": math.sqrt(err2 / norm2) if norm2 > 0 else 0.0,
        "max_layer_relative_error": max(v["relative_error"] for v in per_layer.values()),
        "layers": per_layer,
    }
    return config, tensors, report


# -- import ----------------------------------------------------------------------------------------
def artifact_from_peft(cfg: dict, cfg_file: Path, weights_file: Path, raw: dict[str, torch.Tensor]) -> Artifact:
    """A peft LoRA / rsLoRA (/ DoRA, when that method is registered) adapter as an lsr-adapt Artifact;
    ``raw``: the tensors of its weights file."""
    peft_type = str(cfg.get("peft_type"))
    if peft_type not in SUPPORTED_IMPORT:
        raise LsrAdaptError(f"{cfg_file}: peft_type {peft_type!r} cannot be imported; valid choices: "
                            f"{', '.join(SUPPORTED_IMPORT)}")
    if cfg.get("alpha_pattern") or cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise LsrAdaptError(f"{cfg_file}: per-layer alphas (alpha_pattern) and LoRA biases are not supported")
    use_dora = bool(cfg.get("use_dora"))
    method = "dora" if use_dora else "lora"
    if method not in METHODS:
        raise LsrAdaptError(f"{cfg_file}: use_dora=true needs the 'dora' method, which is not available")
    tensors, targets, ranks = {}, set(), set()
    suffixes = {".lora_A.weight": "lora_A", ".lora_B.weight": "lora_B"}
    for key, t in raw.items():
        name = key.removeprefix(PREFIX)
        for suffix, param in suffixes.items():
            if name.endswith(suffix):
                layer = name[: -len(suffix)]
                targets.add(layer)
                tensors[f"{layer}.{param}"] = t
                if param == "lora_A":
                    ranks.add(t.shape[0])
                break
        else:
            if name.endswith((".lora_magnitude_vector", ".lora_magnitude_vector.weight")) and use_dora:
                layer = name.split(".lora_magnitude_vector")[0]
                tensors[f"{layer}.lora_magnitude"] = t.reshape(-1)
            elif ".lora_" in name:
                raise LsrAdaptError(f"{weights_file}: tensor {key} is of a LoRA variant lsr-adapt does not import")
            else:
                tensors[name.replace(".modules_to_save.default.", ".")] = t
    if not targets:
        raise LsrAdaptError(f"{weights_file}: no lora_A / lora_B tensors; not a LoRA adapter")
    if len(tensors) == 2 * len(targets) + use_dora * len(targets):
        log.warning("%s holds no task head (modules_to_save); the model's own head is kept", weights_file)
    if len(ranks) > 1 or (cfg.get("rank_pattern") and ranks != {int(cfg.get("r", 8))}):
        raise LsrAdaptError(f"{cfg_file}: layers of different ranks {sorted(ranks)} (rank_pattern) are not supported")
    values = {"r": ranks.pop(), "alpha": float(cfg.get("lora_alpha", 8)),
              "dropout": float(cfg.get("lora_dropout", 0.0)), "use_rslora": bool(cfg.get("use_rslora", False))}
    config_cls = METHODS[method].config_cls
    known = {f.name for f in dataclasses.fields(config_cls)}
    method_cfg = METHODS[method].make_config({k: v for k, v in values.items() if k in known})
    meta = {"format": "peft", "adaptation_type": method, "method_config": dataclasses.asdict(method_cfg),
            "base_model": cfg.get("base_model_name_or_path"), "peft_config": cfg}
    return Artifact(method, method_cfg, tuple(sorted(targets)), tensors, str(weights_file), meta)

