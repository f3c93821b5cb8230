"""The LoRA family beside LSR (issue 3): DoRA, LoRA+, LoRA-FA, DyLoRA, QLoRA, rsLoRA, full / head.

References used: HF peft (DoRA, rsLoRA) on the same weights, dense formulas, parameter-count
formulas, a from-scratch NF4 quantiser (QLoRA), and autograd's saved-tensor hooks (LoRA-FA).
"""

from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, SMALL_RUN, run_train, tiny_batch, tiny_classifier
from tolerances import assert_fp32_close, forward_terms, fp32_atol
from torch import nn

from lsr_adapt.adapters import (
    METHODS,
    AdapterLayer,
    LoRALinear,
    adapter_layers,
    apply_adapter,
    merge_adapters,
    set_adapters_enabled,
    unmerge_adapters,
)
from lsr_adapt.adapters import registry as registry_mod
from lsr_adapt.adapters.dylora import DyLoRALinear, dylora_layers, rank_metrics, set_rank
from lsr_adapt.adapters.lora_fa import LoRAFALinear
from lsr_adapt.adapters.lora_plus import lora_plus_param_groups
from lsr_adapt.errors import LsrAdaptError
from lsr_adapt.modeling import prepare_model

try:
    import bitsandbytes  # noqa: F401

    HAVE_BNB = True
except Exception:  # pragma: no cover - depends on the environment
    HAVE_BNB = False

needs_bnb = pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes not installed (pip install 'lsr-adapt[qlora]')")

R = 4  # rank used in the unit tests (tiny model: hidden 32, q and v of 2 layers → 4 wrapped 32×32 layers)

# method → (config, trainable parameters per wrapped (in, out) layer)
METHOD_CASES = {
    "lora": ({"r": R, "alpha": 8}, lambda i, o: R * (i + o)),
    "rslora": ({"r": R, "alpha": 8, "use_rslora": True}, lambda i, o: R * (i + o)),
    "dora": ({"r": R, "alpha": 8}, lambda i, o: R * (i + o) + o),
    "lora_plus": ({"r": R, "alpha": 8, "lr_ratio": 16}, lambda i, o: R * (i + o)),
    "lsr_plus": ({"r": 2, "num_terms": 3, "lr_ratio": 4}, None),  # counted from the Kronecker factors below
    "lora_fa": ({"r": R, "alpha": 8}, lambda i, o: R * o),
    "dylora": ({"r": R, "alpha": 8}, lambda i, o: R * (i + o)),
    # blocksize 32: on CPU it must divide in_features (32 here), see test_qlora_cpu_blocksize_guard
    "qlora": ({"r": R, "alpha": 8, "blocksize": 32}, lambda i, o: R * (i + o)),
}
ADAPTER_METHODS = [pytest.param(m, marks=needs_bnb) if m == "qlora" else m for m in METHOD_CASES]


def _adaptation_type(method: str) -> str:
    return "lora" if method == "rslora" else method


def _prepared(method: str, config=None):
    """(loaded, untouched copy of the base model, ``PreparedModel``) for a tiny RoBERTa classifier."""
    loaded = tiny_classifier()
    base = copy.deepcopy(loaded.model).eval()
    cfg = METHOD_CASES[method][0] if config is None and method in METHOD_CASES else (config or {})
    return loaded, base, prepare_model(loaded, _adaptation_type(method), dict(cfg))


@torch.no_grad()
def _perturb(model: nn.Module, seed: int = 1) -> None:
    """Non-zero adapter weights (B starts at zero, which would make most checks vacuous)."""
    g = torch.Generator().manual_seed(seed)
    for layer in adapter_layers(model).values():
        for name, p in layer.adapter_parameters().items():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 0.2
            p.copy_(p * (1 + noise) if name == "lora_magnitude" else noise)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# -- every adapter method ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_starts_at_the_base_model(method):
    loaded, base, _ = _prepared(method)
    model = loaded.model.eval()
    batch = tiny_batch(loaded.tokenizer)
    out = _logits(model, batch)
    if method == "qlora":  # ΔW = 0 over the 4-bit base; the 4-bit base itself is close to fp32
        set_adapters_enabled(model, False)
        torch.testing.assert_close(out, _logits(model, batch), rtol=0, atol=0)
        from lsr_adapt.adapters.qlora import dequantize

        originals = dict(base.named_modules())
        for name, m in model.named_modules():  # each 4-bit weight within half an NF4 step of the fp32 one
            if getattr(getattr(m, "weight", None), "quant_state", None) is not None:
                w = originals[name.removesuffix(".base_layer")].weight.detach().reshape(-1, 32)
                err = (dequantize(m.weight).reshape(-1, 32) - w).abs()
                # NF4: half the widest level gap, (1 − 0.7230)/2 = 0.139 of the block absmax (+ its 8-bit error)
                assert (err <= 0.16 * w.abs().amax(1, keepdim=True)).all(), name
    else:  # ΔW = 0, but the adapted forward adds it (and DoRA rescales by m/‖W₀‖ = 1) in float32
        assert_fp32_close(out, _logits(base, batch), terms=forward_terms(model, batch))


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_merge_equals_unmerged_and_unmerge_restores(method):
    loaded, _, _ = _prepared(method)
    model = loaded.model.eval()
    _perturb(model)
    batch = tiny_batch(loaded.tokenizer)
    layers = adapter_layers(model)
    weights = {n: (layer.base_layer.weight.detach().clone(), layer.base_weight().detach().clone(),
                   layer.delta_weight().detach().clone()) for n, layer in layers.items()}
    unmerged = _logits(model, batch)
    merge_adapters(model)
    assert all(layer.merged for layer in layers.values())
    merged = _logits(model, batch)
    if method == "qlora":
        # re-quantizing W₀ + ΔW costs one NF4 rounding: within half a level gap of each block's scale
        for n, layer in layers.items():
            target = (weights[n][1] + weights[n][2]).reshape(-1, 32)
            err = (layer.base_weight() - weights[n][1] - weights[n][2]).reshape(-1, 32).abs()
            assert (err <= 0.16 * target.abs().amax(1, keepdim=True)).all(), n  # 0.139 + 8-bit absmax, as above
    else:
        # merged: (W₀+ΔW)x, unmerged: W₀x + B(Ax): the forward's sums in another order, plus ΔW's R terms
        assert_fp32_close(merged, unmerged, terms=forward_terms(model, batch) + R)
        for n, layer in layers.items():  # the merged weight is W₀ + ΔW (DoRA's column norms: in_features terms)
            assert_fp32_close(layer.base_weight(), weights[n][1] + weights[n][2], terms=layer.in_features + R)
    unmerge_adapters(model)
    for n, layer in layers.items():
        assert torch.equal(layer.base_layer.weight.detach(), weights[n][0])  # bit for bit
    torch.testing.assert_close(_logits(model, batch), unmerged, rtol=0, atol=0)


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_only_intended_parameters_train(method):
    loaded, _, prepared = _prepared(method)
    model = loaded.model.train()
    _perturb(model)
    layers = adapter_layers(model)
    head = set(prepared.head_names)
    intended = set(head)
    for ln, layer in layers.items():
        intended |= {f"{ln}.{pn}" for pn in layer.adapter_parameters() if pn not in layer.frozen_params}
    assert _trainable_names(model) == intended
    if method == "lora_fa":
        assert all(not layer.lora_A.requires_grad and layer.lora_B.requires_grad for layer in layers.values())
    batch = tiny_batch(loaded.tokenizer)
    out = model(**batch, labels=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()
    for name, p in model.named_parameters():
        if name in intended:
            assert p.grad is not None, name
            if method != "dylora" or "lora_B" in name:  # DyLoRA rows past the sampled rank get zeros
                assert p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_parameter_counts_match_formulas(method):
    loaded, _, prepared = _prepared(method)
    layers = adapter_layers(loaded.model)
    assert len(layers) == 4  # query and value of 2 layers
    per_layer = METHOD_CASES[method][1]
    if per_layer is None:  # LSR: t·r·(d₁ + d₂ + k₁ + k₂)
        cfg = METHOD_CASES[method][0]
        per_layer = lambda i, o: cfg["num_terms"] * cfg["r"] * (8 + 4 + 8 + 4)  # noqa: E731 - 32 = 8·4
    expected = sum(per_layer(layer.in_features, layer.out_features) for layer in layers.values())
    counts = prepared.counts
    assert counts["trainable_params"] == expected + counts["head_params"]
    assert counts["head_params"] == 32 * 32 + 32 + 32 * 2 + 2  # classifier.dense + out_proj
    total = sum(p.numel() for p in tiny_classifier().model.parameters())
    adapter_total = sum(layer.num_adapter_params() for layer in layers.values())
    assert counts["total_params"] == total + adapter_total  # QLoRA counts weights, not packed bytes


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_save_load_round_trip(method, tmp_path):
    from safetensors.torch import load_file

    from lsr_adapt.artifacts import ADAPTER_WEIGHTS, save_adapter

    loaded, _, _ = _prepared(method)
    model = loaded.model.eval()
    _perturb(model, seed=3)
    batch = tiny_batch(loaded.tokenizer)
    expected = _logits(model, batch)
    save_adapter(model, tmp_path, {"adaptation_type": method})
    tensors = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    fresh, _, _ = _prepared(method)
    _, unexpected = fresh.model.load_state_dict(tensors, strict=False)
    assert not unexpected
    assert {k for k in tensors if ".lora_A" in k or ".lsr_A" in k}  # the A side is saved (LoRA-FA: frozen)
    torch.testing.assert_close(_logits(fresh.model.eval(), batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["dora", "lora_fa", "dylora", pytest.param("qlora", marks=needs_bnb)])
def test_gpt2_conv1d_layers_equal_the_linear_ones(method):
    """GPT-2's Conv1D stores W transposed; every method must read it as (out, in)."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    conv = Conv1D(96, 64)
    with torch.no_grad():
        conv.weight.copy_(lin.weight.T)
        conv.bias.copy_(lin.bias)
    make = METHODS[method].make_layer
    cfg = METHODS[method].make_config({"r": R, **({"blocksize": 64} if method == "qlora" else {})})
    torch.manual_seed(1)
    a = make(lin, cfg, "lin")
    torch.manual_seed(1)
    b = make(conv, cfg, "conv")
    _perturb(nn.ModuleDict({"a": a}), seed=5)
    _perturb(nn.ModuleDict({"b": b}), seed=5)
    x = torch.randn(3, 5, 64)
    for layer in (a, b):
        layer.eval()
    # Conv1D (x·W, addmm) vs Linear (x·Wᵀ): other kernels over the 64 inputs, plus the rank-R path
    assert_fp32_close(b(x), a(x), terms=64 + R)
    assert_fp32_close(b.delta_weight(), a.delta_weight(), terms=R)  # B·A: R terms, transposed layout
    if method != "qlora":
        b.merge()
        assert_fp32_close(b(x), a(x), terms=64 + R)  # (W₀+ΔW)x vs W₀x + B(Ax)


# -- DoRA and rsLoRA against peft ----------------------------------------------------------------

def _peft_twin(loaded, base, use_dora: bool, use_rslora: bool, dropout: float = 0.0):
    """A peft model on the same base weights, with the same (random) adapter weights as ours."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(base, LoraConfig(r=R, lora_alpha=8, lora_dropout=dropout, use_dora=use_dora,
                                                 use_rslora=use_rslora, target_modules=["query", "value"]))
    _perturb(loaded.model)
    ours = dict(loaded.model.named_parameters())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" not in name:
                continue
            key = name.removeprefix("base_model.model.").replace(".default.weight", "").replace(".default", "")
            p.copy_(ours[key.replace("lora_magnitude_vector", "lora_magnitude")])
    return peft_model


@pytest.mark.parametrize("use_rslora", [False, True])
def test_dora_equals_peft_outputs_and_gradients(use_rslora):
    loaded, base, _ = _prepared("dora", {"r": R, "alpha": 8, "use_rslora": use_rslora})
    peft_model = _peft_twin(loaded, base, use_dora=True, use_rslora=use_rslora)
    batch = tiny_batch(loaded.tokenizer)
    labels = torch.tensor([0, 1, 1, 0])
    losses = []
    for model in (loaded.model, peft_model):
        model.train()
        model.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, nn.Dropout) else None)
        out = model(**batch, labels=labels)
        out.loss.backward()
        losses.append(out.loss.detach())
    # peft computes DoRA's forward in another order: the forward's sums, then the mean over the batch
    assert_fp32_close(losses[0], losses[1], terms=forward_terms(loaded.model, batch) + len(labels))
    peft_grads = {n.removeprefix("base_model.model.").replace(".default.weight", "").replace(".default", "")
                  .replace("lora_magnitude_vector", "lora_magnitude"): p.grad
                  for n, p in peft_model.named_parameters() if "lora_" in n}
    for name, p in loaded.model.named_parameters():
        if name in peft_grads:
            # backward retraces the forward path (×2) and sums each weight's gradient over the tokens
            tokens = int(batch["attention_mask"].numel())
            assert_fp32_close(p.grad, peft_grads[name], terms=2 * forward_terms(loaded.model, batch) + tokens)
    assert len(peft_grads) == 4 * 3


def test_dora_with_dropout_equals_peft():
    """With dropout active, peft applies it to the correction terms only; same RNG → same output."""
    loaded, base, _ = _prepared("dora", {"r": R, "alpha": 8, "dropout": 0.3})
    peft_model = _peft_twin(loaded, base, use_dora=True, use_rslora=False, dropout=0.3)
    batch = tiny_batch(loaded.tokenizer)
    outs = []
    for model in (loaded.model.train(), peft_model.train()):
        torch.manual_seed(123)
        outs.append(model(**batch).logits.detach())
    assert_fp32_close(outs[0], outs[1], terms=forward_terms(loaded.model, batch))  # peft's order of sums


def test_rslora_equals_peft():
    loaded, base, _ = _prepared("rslora")
    peft_model = _peft_twin(loaded, base, use_dora=False, use_rslora=True).eval()
    layer = next(iter(adapter_layers(loaded.model).values()))
    assert layer.scaling == pytest.approx(8 / math.sqrt(R))
    batch = tiny_batch(loaded.tokenizer)
    assert_fp32_close(_logits(loaded.model.eval(), batch), _logits(peft_model, batch),  # peft's order of sums
                      terms=forward_terms(loaded.model, batch))


@pytest.mark.parametrize("method", ["dora", "lora_plus", "lora_fa", "dylora", pytest.param("qlora", marks=needs_bnb)])
def test_methods_built_on_lora_honour_rslora(method):
    cfg = {**METHOD_CASES[method][0], "use_rslora": True}
    loaded, _, _ = _prepared(method, cfg)
    for layer in adapter_layers(loaded.model).values():
        assert isinstance(layer, LoRALinear) and layer.scaling == pytest.approx(8 / math.sqrt(R))
        if isinstance(layer, DyLoRALinear):
            assert layer.rank_scaling(2) == pytest.approx(8 / math.sqrt(2))


def test_dora_forms_no_dense_delta_per_token():
    """Training forward + backward of a DoRA layer: no out×in tensor is saved for backward, and
    the step's only out×in temporaries are the weight-norm pass (computed once, under no_grad)."""
    from lsr_adapt.adapters.dora import DoRALinear

    layer = DoRALinear(nn.Linear(48, 40), r=R)
    _perturb(nn.ModuleDict({"l": layer}))
    x = torch.randn(6, 7, 48, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x).sum().backward()
    params = {p.data_ptr() for p in layer.parameters()}
    activations = [t for t in saved if t.data_ptr() not in params]
    assert activations and not any(tuple(t.shape) in ((40, 48), (48, 40)) for t in activations)  # no ΔW / W' kept for backward
    assert layer.lora_magnitude.grad is not None and layer.lora_A.grad is not None


# -- LoRA+ ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,b_names", [("lora_plus", ("lora_B",)), ("lsr_plus", ("lsr_B1", "lsr_B2"))])
def test_lora_plus_groups_carry_the_right_learning_rates(method, b_names):
    loaded, _, prepared = _prepared(method)
    model = loaded.model
    ratio = METHOD_CASES[method][0]["lr_ratio"]
    groups = lora_plus_param_groups(model, METHODS[method].make_config(METHOD_CASES[method][0]), 1e-3, 0.01)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert set(lr_of) == {id(p) for p in names.values() if p.requires_grad}  # every trainable param, once
    assert sum(len(g["params"]) for g in groups) == len(lr_of)
    for name, p in names.items():
        if not p.requires_grad:
            continue
        lr, wd = lr_of[id(p)]
        is_b = name.rsplit(".", 1)[-1] in b_names
        assert lr == pytest.approx(1e-3 * ratio if is_b else 1e-3), name
        assert wd == (0.0 if name.endswith("bias") else 0.01), name
    assert prepared.counts["trainable_params"] == sum(p.numel() for g in groups for p in g["params"])


def test_lora_plus_ratio_survives_the_trainer(tmp_path, monkeypatch):
    """Through train(): the Trainer's optimizer has the groups and its linear schedule keeps the ratio."""
    from transformers import Trainer

    seen = []
    original = Trainer.create_scheduler

    def spy(self, num_training_steps, optimizer=None):
        scheduler = original(self, num_training_steps, optimizer)
        seen.append((self.optimizer, scheduler))
        return scheduler

    monkeypatch.setattr(Trainer, "create_scheduler", spy)
    results = run_train(tmp_path, "model=roberta_lora_plus", *FAST, "training.warmup_ratio=0.25")
    assert results["status"] == "completed"
    optimizer, scheduler = seen[0]
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    assert type(optimizer).__name__ == "AdamW"  # the Trainer's own optimizer class (optim=adamw_torch)
    names = [g["name"] for g in optimizer.param_groups]
    assert set(names) == {"b", "other", "other_no_decay"}  # lora_B, head weights, head biases
    lr = results["learning_rate"]
    expected = {"b": 16 * lr, "other": lr, "other_no_decay": lr}
    # the Trainer's warmup + linear schedule scales every group by the same factor: the ratio holds
    assert scheduler.base_lrs == pytest.approx([expected[n] for n in names])
    assert len({id(f) for f in scheduler.lr_lambdas}) == 1


# -- LoRA-FA -------------------------------------------------------------------------------------

def _saved_bytes(layer: nn.Module, x: torch.Tensor) -> tuple[int, bool]:
    """Bytes autograd saves for one forward of ``layer``, and whether one of them is x itself."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    params = {p.data_ptr() for p in layer.parameters()}
    activations = [t for t in saved if t.data_ptr() not in params]
    holds_x = any(t.data_ptr() == x.data_ptr() for t in activations)
    return sum(t.numel() * t.element_size() for t in activations), holds_x


def test_lora_fa_saves_only_the_projection():
    torch.manual_seed(0)
    base = nn.Linear(256, 256).requires_grad_(False)  # frozen, as in a prepared model
    x = torch.randn(8, 16, 256, requires_grad=True)
    lora_bytes, lora_holds_x = _saved_bytes(LoRALinear(copy.deepcopy(base), r=R), x)
    fa_bytes, fa_holds_x = _saved_bytes(LoRAFALinear(copy.deepcopy(base), r=R), x)
    assert lora_holds_x and not fa_holds_x
    assert fa_bytes == 8 * 16 * R * 4  # A·x only: N × r fp32
    assert lora_bytes >= 8 * 16 * 256 * 4 + fa_bytes


def test_lora_fa_a_unchanged_after_optimizer_steps():
    loaded, _, _ = _prepared("lora_fa")
    model = loaded.model.train()
    layers = adapter_layers(model)
    a_before = {n: layer.lora_A.detach().clone() for n, layer in layers.items()}
    b_before = {n: layer.lora_B.detach().clone() for n, layer in layers.items()}
    # AdamW over every parameter (frozen ones included) with weight decay: A must still not move
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    batch = tiny_batch(loaded.tokenizer)
    for _ in range(3):
        opt.zero_grad()
        model(**batch, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        opt.step()
    for n, layer in layers.items():
        assert torch.equal(layer.lora_A.detach(), a_before[n])
        assert not torch.equal(layer.lora_B.detach(), b_before[n])


# -- DyLoRA --------------------------------------------------------------------------------------

def test_dylora_rank_b_uses_exactly_the_first_b_components():
    loaded, _, _ = _prepared("dylora")
    model = loaded.model.eval()
    _perturb(model)
    batch = tiny_batch(loaded.tokenizer)
    for b in (1, 3, R):
        set_rank(model, b)
        got = _logits(model, batch)
        # reference: a plain LoRA of rank b (scale α/b) holding A[:b], B[:, :b]
        ref = copy.deepcopy(model)
        for name, layer in adapter_layers(model).items():
            plain = LoRALinear(copy.deepcopy(layer.base_layer), r=b, alpha=layer.alpha)
            with torch.no_grad():
                plain.lora_A.copy_(layer.lora_A[:b])
                plain.lora_B.copy_(layer.lora_B[:, :b])
            parent, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent), child, plain)
        # the sliced rank-b path vs a plain rank-b LoRA: the same sums, possibly other kernels
        assert_fp32_close(got, _logits(ref, batch), terms=forward_terms(model, batch))
        for layer in adapter_layers(model).values():  # the merge / export weight is the rank-b one
            assert_fp32_close(layer.delta_weight(), layer.lora_B[:, :b] @ layer.lora_A[:b] * (layer.alpha / b),
                              terms=b + 1)  # b products, one scaling
    with pytest.raises(LsrAdaptError, match="rank must be in 1..4"):
        set_rank(model, R + 1)


def test_dylora_training_masks_one_shared_rank_per_step():
    loaded, _, _ = _prepared("dylora")
    model = loaded.model
    model.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, nn.Dropout) else None)  # train == eval maths
    _perturb(model)
    batch = tiny_batch(loaded.tokenizer)
    layers = dylora_layers(model)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        model.train()
        model.zero_grad()
        out = model(**batch).logits
        ranks = {int(layer.train_rank) for layer in layers}
        assert len(ranks) == 1  # one b for the whole model
        b = ranks.pop()
        seen.add(b)
        out.sum().backward()
        for layer in layers:  # rows past b: in the graph (a gradient tensor), but zero
            assert layer.lora_A.grad is not None and layer.lora_A.grad[b:].abs().sum() == 0
            assert layer.lora_B.grad[:, b:].abs().sum() == 0
            assert layer.lora_A.grad[:b].abs().sum() > 0
        # the masked training forward at b equals the sliced rank-b evaluation
        set_rank(model, b)
        # R-wide matmuls with zeroed components vs b-wide slices: the same sums in other kernels and
        # blockings, along the whole forward path (a fixed atol of 1e-6 failed on a fresh install)
        assert_fp32_close(out.detach(), _logits(model.eval(), batch), terms=forward_terms(model, batch))
        set_rank(model, R)
    assert seen == set(range(1, R + 1))


def test_dylora_has_no_graph_breaks_or_recompiles():
    loaded, _, _ = _prepared("dylora")
    model = loaded.model.train()
    batch = dict(tiny_batch(loaded.tokenizer))
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(lambda **kw: model(**kw).logits)(**batch)
        assert explained.graph_break_count == 0
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=backend)
        compiled(**batch).logits.sum().backward()
        first = len(compiles)
        ranks = set()
        for _ in range(8):
            compiled(**batch).logits.sum().backward()
            ranks.add(int(dylora_layers(model)[0].train_rank))
        assert len(ranks) > 1 and len(compiles) == first  # new ranks, no recompilation
    finally:
        torch._dynamo.reset()


def test_dylora_rank_metrics_hook_restores_the_eval_rank():
    loaded, _, _ = _prepared("dylora", {"r": R, "eval_rank": 2})
    model = loaded.model.eval()
    _perturb(model)
    batch = tiny_batch(loaded.tokenizer)
    cfg = METHODS["dylora"].make_config({"r": R, "eval_rank": 2, "eval_all_ranks": True})

    def evaluate():
        return {"first_logit": float(_logits(model, batch)[0, 0]), "rank": dylora_layers(model)[0].eval_rank}

    out = rank_metrics(model, cfg, evaluate)
    assert out["eval_rank"] == 2
    assert [v["rank"] for v in out["rank_metrics"].values()] == list(range(1, R + 1))
    assert len({v["first_logit"] for v in out["rank_metrics"].values()}) == R
    assert all(layer.eval_rank == 2 for layer in dylora_layers(model))
    with pytest.raises(LsrAdaptError, match=r"eval_rank must be in 1..r=4, got 5"):
        METHODS["dylora"].make_config({"r": R, "eval_rank": 5})


# -- QLoRA ---------------------------------------------------------------------------------------

def _nf4_levels() -> torch.Tensor:
    """NF4 from its definition (QLoRA paper, appendix E): quantiles of N(0, 1), 8 positive and 7
    negative (the asymmetric halves give an exact zero), normalised to [-1, 1]."""
    import numpy as np
    from scipy.stats import norm

    offset = 0.9677083  # the paper's δ = ½(1/(2·15) + 1/(2·16)) … as used by the reference code
    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    levels = np.sort(np.concatenate([pos, [0.0], neg]))
    return torch.tensor(levels / np.abs(levels).max(), dtype=torch.float32)


@needs_bnb
def test_nf4_matches_a_from_scratch_quantiser():
    from lsr_adapt.adapters.qlora import QLoRAConfig, dequantize, quantize_linear

    torch.manual_seed(0)
    lin = nn.Linear(256, 128)
    q = quantize_linear(lin, QLoRAConfig())
    w = lin.weight.detach().reshape(-1, 64)  # blocks of 64 consecutive weights
    absmax = w.abs().amax(1, keepdim=True)
    levels = _nf4_levels()
    idx = ((w / absmax)[..., None] - levels).abs().argmin(-1)
    deq = dequantize(q.weight).reshape(-1, 64)
    deq_absmax = deq.abs().amax(1, keepdim=True)
    got_idx = ((deq / deq_absmax)[..., None] - levels).abs().argmin(-1)
    assert torch.equal(got_idx, idx)  # every weight rounds to the same NF4 level
    # double-quantised scales: the absmaxes (minus their mean) in an 8-bit code: a rounding of half an
    # 8-bit step, 2⁻⁹ ≈ 0.002 relative
    assert ((deq_absmax / absmax) - 1).abs().max() < 2e-3
    x = torch.randn(5, 256)
    # bitsandbytes' 4-bit kernel vs F.linear on the dequantized weight: 256 inputs summed in another order
    assert_fp32_close(q(x), F.linear(x, dequantize(q.weight), lin.bias), terms=256 + 1)
    q.eval()
    with torch.no_grad():  # the inference path too
        assert_fp32_close(q(x), F.linear(x, dequantize(q.weight), lin.bias), terms=256 + 1)


@needs_bnb
def test_qlora_quantizes_every_frozen_encoder_linear_and_reports_memory():
    import bitsandbytes as bnb

    from lsr_adapt.adapters.qlora import QLoRAConfig, quantize_linear, weight_memory

    loaded, _, _ = _prepared("qlora")
    model = loaded.model
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    quantized = {n for n, m in linears.items() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized == {n for n in linears if n.startswith("roberta.")}  # the head stays fp32
    assert all(not isinstance(m, bnb.nn.Linear4bit) for n, m in linears.items() if n.startswith("classifier"))
    # RoBERTa-base sized layer: codes n/2 + 8-bit absmax n/64 + fp32 absmax-of-absmax per 256 blocks
    # + the two code books (16 + 256 fp32) + the fp32 offset
    n = 768 * 768
    mem = weight_memory(nn.Sequential(quantize_linear(nn.Linear(768, 768, bias=False), QLoRAConfig())))
    assert mem["quantized_params"] == n
    assert mem["quantized_bytes"] == n // 2 + n // 64 + 4 * math.ceil(n / 64 / 256) + 4 * (16 + 256) + 4
    assert mem["bytes_per_quantized_param"] <= 0.6
    no_dq = weight_memory(nn.Sequential(quantize_linear(nn.Linear(768, 768, bias=False),
                                                        QLoRAConfig(double_quant=False))))
    assert no_dq["quantized_bytes"] == n // 2 + 4 * (n // 64) + 4 * 16  # fp32 absmax per block


@needs_bnb
def test_qlora_trains_end_to_end_on_cpu(tmp_path):
    results = run_train(tmp_path, "model=roberta_qlora", *FAST, *QLORA_TINY)
    mem = results["base_weight_memory"]
    expected_dtype = "float32" if not torch.cuda.is_available() else (
        "bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert mem["quant_type"] == "nf4" and mem["double_quant"] and mem["compute_dtype"] == expected_dtype
    assert mem["quantized_params"] == 2 * (4 * 32 * 32 + 2 * 32 * 64)  # q k v o + up, down per layer
    assert mem["bytes_per_quantized_param"] < 4
    assert results["total_params"] == results["trainable_params"] + mem["frozen_params"]


def test_qlora_without_bitsandbytes_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    loaded = tiny_classifier()
    with pytest.raises(LsrAdaptError) as err:
        apply_adapter(loaded.model, "qlora", {"r": R})
    assert "pip install 'lsr-adapt[qlora]'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LsrAdaptError, match="needs bitsandbytes"):
        run_train(tmp_path, "model=roberta_qlora", *FAST, *QLORA_TINY)


@needs_bnb
def test_qlora_old_bitsandbytes_without_cuda_is_a_one_line_error(monkeypatch):
    import bitsandbytes as bnb

    monkeypatch.setattr(bnb, "__version__", "0.45.5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LsrAdaptError, match=r"without CUDA needs bitsandbytes>=0.50 .*found 0.45.5"):
        apply_adapter(tiny_classifier().model, "qlora", {"r": R, "blocksize": 32})


@needs_bnb
def test_qlora_cpu_blocksize_guard():
    """bitsandbytes' CPU dequantize is wrong when blocks straddle rows (in_features % blocksize ≠ 0):
    shown here against the flat (row-agnostic) dequantization, and refused with a one-line error."""
    import bitsandbytes.functional as bnbf

    torch.manual_seed(0)
    w = torch.randn(64, 96)
    for blocksize, in_features_ok in ((64, False), (32, True)):
        q, qs = bnbf.quantize_4bit(w, blocksize=blocksize, compress_statistics=False, quant_type="nf4")
        flat_qs = copy.copy(qs)
        flat_qs.shape = torch.Size([w.numel()])
        flat = bnbf.dequantize_4bit(q, flat_qs).reshape(w.shape)
        # the flat path is right: within half the widest NF4 gap (0.139) of the absmax, which is ≤ max|w|
        assert (flat - w).abs().max() < 0.16 * w.abs().max()
        assert torch.equal(bnbf.dequantize_4bit(q, qs), flat) == in_features_ok
    if not torch.cuda.is_available():
        with pytest.raises(LsrAdaptError, match=r"in_features \(32, layer roberta\..*blocksize \(64\)"):
            apply_adapter(tiny_classifier().model, "qlora", {"r": R})


def test_qlora_config_errors_name_the_choices():
    with pytest.raises(LsrAdaptError, match="quant_type 'int4'; valid choices: nf4, fp4"):
        METHODS["qlora"].make_config({"quant_type": "int4"})
    with pytest.raises(LsrAdaptError, match="unknown qlora option"):
        METHODS["qlora"].make_config({"bits": 4})


@needs_bnb
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_cuda_forward_backward_and_memory():
    import bitsandbytes as bnb

    from lsr_adapt.adapters.qlora import QLoRAConfig, QLoRALinear, dequantize, weight_memory

    torch.manual_seed(0)
    base = nn.Linear(768, 768).cuda()
    layer = QLoRALinear(base, QLoRAConfig(r=8, compute_dtype="bf16"))  # quantized on the GPU
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit) and layer.base_layer.weight.device.type == "cuda"
    _perturb(nn.ModuleDict({"l": layer}))
    x = torch.randn(4, 16, 768, device="cuda")
    y = layer(x)
    w = dequantize(layer.base_layer.weight).float()
    ref = F.linear(x, w, layer.base_layer.bias.float()) + layer.scaling * (x @ layer.lora_A.T) @ layer.lora_B.T
    # bf16 compute: x and W rounded to bf16 (2⁻⁹ relative each), errors of random sign over 768 products:
    # about 2⁻⁸·√768·rms(x·w) ≈ 0.4% of max|ref|; 0.05 leaves > 10× room, a wrong ΔW or scale does not fit
    assert (y.float() - ref).abs().max() < 0.05 * ref.abs().max()
    y.float().sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.dtype == torch.float32
    assert (w - base.weight).abs().max() < 0.2 * base.weight.abs().max()  # NF4: ≤ 0.139 of a block's absmax
    assert weight_memory(layer)["bytes_per_quantized_param"] <= 0.6


@needs_bnb
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_cpu_quantized_weights_move_to_cuda_unchanged():
    """train() quantizes on CPU and the Trainer moves the model: the 4-bit layout must be the same."""
    from lsr_adapt.adapters.qlora import QLoRAConfig, dequantize, quantize_linear

    torch.manual_seed(0)
    lin = nn.Linear(768, 3072)
    on_cpu = quantize_linear(lin, QLoRAConfig()).cuda()
    on_cuda = quantize_linear(copy.deepcopy(lin).cuda(), QLoRAConfig())
    assert torch.equal(on_cpu.weight.data, on_cuda.weight.data)  # the same 4-bit codes, exactly
    # Dequantised, the two need not be bit-equal: on an H100 (bitsandbytes 0.50.2, torch 2.11+cu130)
    # 0.2% of the values differed by up to 1.5e-3 of themselves, where the kernels restore the
    # double-quantised absmax differently. That is below bf16's step 2⁻⁸ (3.9e-3), the precision QLoRA
    # computes in, so the bound is 2⁻⁸ of each value; a wrong code or block scale moves values by far more.
    w_cpu, w_cuda = dequantize(on_cpu.weight).float(), dequantize(on_cuda.weight).float()
    torch.testing.assert_close(w_cpu, w_cuda, rtol=2**-8, atol=0)
    x = torch.randn(4, 768, device="cuda")
    # each output is Σᵢ xᵢ·wᵢ over 768 inputs: its change is at most Σᵢ |xᵢ|·|Δwᵢ|, plus float32 reordering
    bound = (x.abs() @ (w_cpu - w_cuda).abs().T).max().item()
    torch.testing.assert_close(on_cpu(x), on_cuda(x), rtol=0, atol=bound + fp32_atol(on_cuda(x), 768 + 3))


@needs_bnb
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_cuda_trains_with_the_paged_optimizer(tmp_path):
    results = run_train(tmp_path, "model=roberta_qlora", *FAST, "model.qlora.paged_optimizer=true")  # 64 on CUDA
    assert results["status"] == "completed" and results["base_weight_memory"]["compute_dtype"] == "bfloat16"


# -- full / head ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["full", "head"])
def test_baselines_train_the_right_parameters(method):
    loaded, base, prepared = _prepared(method)
    model = loaded.model
    assert not adapter_layers(model)
    all_names = {n for n, _ in model.named_parameters()}
    head = set(prepared.head_names)
    assert head == {n for n in all_names if n.startswith("classifier.")}
    assert _trainable_names(model) == (all_names if method == "full" else head)
    counts = prepared.counts
    assert counts["trainable_params"] == (counts["total_params"] if method == "full" else counts["head_params"])
    batch = tiny_batch(loaded.tokenizer)
    torch.testing.assert_close(_logits(model.eval(), batch), _logits(base, batch), rtol=0, atol=0)
    with pytest.raises(LsrAdaptError, match=f"unknown {method} option"):
        METHODS[method].make_config({"train_base": method == "head"})


# -- end to end through train() ------------------------------------------------------------------

FAST = (*SMALL_RUN, "training.logging_steps=1")
QLORA_TINY = ("model.qlora.blocksize=32",)  # the tiny model's in_features is 32


SLOW = pytest.mark.slow  # covered by the unit tests above; end to end in the slow suite


@pytest.mark.parametrize("model_cfg", ["roberta_dora", "roberta_full", "roberta_head",
                                       pytest.param("roberta_lora_fa", marks=SLOW),
                                       pytest.param("roberta_rslora", marks=SLOW),
                                       pytest.param("roberta_lsr_plus", marks=SLOW)])
def test_train_writes_results(model_cfg, tmp_path):
    results = run_train(tmp_path, f"model={model_cfg}", *FAST)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "completed" and saved["adaptation_type"] == results["adaptation_type"]
    assert len(saved["eval_history"]) == 1
    if model_cfg == "roberta_full":
        assert saved["trainable_params"] == saved["total_params"]
    if model_cfg == "roberta_head":
        assert saved["trainable_params"] == saved["head_params"] and saved["adapter_params"] == 0


def test_train_dylora_records_a_rank_table(tmp_path):
    results = run_train(tmp_path, "model=roberta_dylora", *FAST, "model.dylora.r=3")
    table = results["rank_metrics"]
    assert list(table) == ["1", "2", "3"] and all("accuracy" in m for m in table.values())
    assert results["eval_rank"] == 3
    assert len(results["eval_history"]) == 1  # the rank evaluations are not epochs
    # the full-rank row is the restored best model's own validation score
    assert table["3"]["accuracy"] == pytest.approx(results["best_metric"])


# -- adding a method -----------------------------------------------------------------------------

@dataclass
class ToyScaleConfig:
    init: float = 0.0


class ToyScaleLinear(AdapterLayer):
    """h = (1 + v) ⊙ W₀x + b, v ∈ R^out: ΔW = diag(v)·W₀ (out parameters)."""

    b_params = ("toy_v",)

    def __init__(self, base_layer, cfg: ToyScaleConfig, name: str = ""):
        super().__init__(base_layer)
        self.toy_v = nn.Parameter(torch.full((self.out_features,), float(cfg.init)))

    def delta_weight(self):
        return self.toy_v[:, None] * self.base_weight()


def test_adding_a_method_is_one_file_one_registration_one_yaml(tmp_path, monkeypatch):
    from lsr_adapt.adapters import register_method

    monkeypatch.setattr(registry_mod, "METHODS", dict(registry_mod.METHODS))  # leave the real registry alone
    register_method("toy_scale", ToyScaleConfig, ToyScaleLinear)  # as a method file ends
    conf = tmp_path / "conf"
    (conf / "adapter").mkdir(parents=True)
    (conf / "model").mkdir()
    (conf / "adapter" / "toy_scale.yaml").write_text("init: 0.0\n")
    (conf / "model" / "roberta_toy_scale.yaml").write_text(
        "defaults:\n  - /backbone/roberta_base@_here_\n  - /adapter/toy_scale@toy_scale\n  - _self_\n"
        "adaptation_type: toy_scale\n")
    results = run_train(tmp_path / "run", f"hydra.searchpath=[file://{conf}]", "model=roberta_toy_scale", *FAST)
    assert results["adaptation_type"] == "toy_scale"
    assert results["adapter_params"] == 4 * 32  # one scale per output of q and v in 2 layers
    assert results["trainable_params"] == 4 * 32 + results["head_params"]
    assert results["method_config"] == {"init": 0.0}


@pytest.mark.slow
def test_cli_multirun_over_the_family(tmp_path):
    """The comparison the issue asks for, through the real CLI: one results.json per job."""
    import subprocess

    models = "roberta_lora,roberta_lsr,roberta_dora,roberta_lora_plus,roberta_lora_fa,roberta_dylora,roberta_full,roberta_head"
    cmd = [sys.executable, "main.py", "experiment=smoke", "--multirun", f"model={models}", *FAST,
           "training.report_to=none", f"hydra.sweep.dir={tmp_path}"]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    done = sorted(json.loads(f.read_text())["adaptation_type"] for f in tmp_path.glob("*/results.json"))
    assert done == sorted(["lora", "lsr", "dora", "lora_plus", "lora_fa", "dylora", "full", "head"])


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_merged_then_disabled_is_the_base_model(method):
    """Disabling a merged adapter takes ΔW out of the weight (exactly: unmerge restores it bit for
    bit); enabling it again folds ΔW back in."""
    loaded, _, _ = _prepared(method)
    model = loaded.model.eval()
    _perturb(model)
    batch = tiny_batch(loaded.tokenizer)
    set_adapters_enabled(model, False)
    base = _logits(model, batch)  # the base model (QLoRA: its 4-bit base) through the same code
    set_adapters_enabled(model, True)
    merge_adapters(model)
    merged = _logits(model, batch)
    assert not torch.equal(merged, base)  # the adapter does change the output
    set_adapters_enabled(model, False)
    assert not any(layer.merged for layer in adapter_layers(model).values())
    torch.testing.assert_close(_logits(model, batch), base, rtol=0, atol=0)
    set_adapters_enabled(model, True)
    assert all(layer.merged for layer in adapter_layers(model).values())
    torch.testing.assert_close(_logits(model, batch), merged, rtol=0, atol=0)  # the same merge, the same floats
