"""lsr_adapt.adapters as a whole (base.AdapterLayer, inject.py, apply_adapter / replace_linear_with_*): the
contract every registered method keeps on a tiny model (starts at the base model, merge / unmerge /
disable, only its parameters train, its parameter formula, save / load, GPT-2 Conv1D), target-module
resolution and the head, and each method trained end to end through train() and the CLI."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from adapter_cases import (
    ADAPTER_METHODS,
    FAST,
    METHOD_CASES,
    R,
    _logits,
    _perturb,
    _prepared,
    _randomize,
    _trainable_names,
    needs_bnb,
)
from helpers import ROOT, run_train, tiny_batch, tiny_classifier
from tolerances import assert_fp32_close, forward_terms
from torch import nn

from lsr_adapt import LoRALinear, LsrAdaptError, LSRLinear, replace_linear_with_lora, replace_linear_with_lsr
from lsr_adapt.adapters import (
    METHODS,
    adapter_layers,
    merge_adapters,
    merge_and_unload,
    set_adapters_enabled,
    unmerge_adapters,
)

# -- every adapter method --------------------------------------------------------------------------


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


# -- LoRA and LSR layers on a model ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "lsr"])
def test_start_equals_base_merge_and_unmerge(method):
    loaded = tiny_classifier()
    model = loaded.model.eval()
    batch = tiny_batch(loaded.tokenizer)
    with torch.no_grad():
        base_logits = model(**batch).logits
    wrap = replace_linear_with_lora if method == "lora" else replace_linear_with_lsr
    wrap(model, ["query", "value"])
    layers = adapter_layers(model)
    for layer in layers.values():
        assert torch.count_nonzero(layer.delta_weight()) == 0  # ΔW = 0 at the start
    with torch.no_grad():  # ΔW = 0 is added to the base output: float32 order of the forward's sums at most
        assert_fp32_close(model(**batch).logits, base_logits, terms=forward_terms(model, batch))
    for i, layer in enumerate(layers.values()):
        _randomize(layer, seed=i)
    originals = {n: layer.base_layer.weight.detach().clone() for n, layer in layers.items()}
    with torch.no_grad():
        adapted = model(**batch).logits
        assert not torch.allclose(adapted, base_logits)
        for layer in layers.values():
            layer.merge()
        # (W₀+ΔW)x vs W₀x + ΔW·x: the forward's sums in another order, plus ΔW's own (≤ 32 terms here)
        assert_fp32_close(model(**batch).logits, adapted, terms=forward_terms(model, batch) + 32)
        for layer in layers.values():
            layer.unmerge()
    for n, layer in layers.items():
        assert torch.equal(layer.base_layer.weight, originals[n])  # bit-exact restore
    with torch.no_grad():  # the restored weights (bit for bit) run the same ops again: identical
        torch.testing.assert_close(model(**batch).logits, adapted, rtol=0, atol=0)
        for layer in layers.values():
            layer.disable_adapter()
        # the base path alone, through the wrapper: the forward's sums, at most in another order
        assert_fp32_close(model(**batch).logits, base_logits, terms=forward_terms(model, batch))


def test_merge_and_unload_leaves_plain_layers():
    loaded = tiny_classifier()
    model = replace_linear_with_lsr(loaded.model.eval(), ["query", "value"])
    for i, layer in enumerate(adapter_layers(model).values()):
        _randomize(layer, seed=i)
    batch = tiny_batch(loaded.tokenizer)
    with torch.no_grad():
        adapted = model(**batch).logits
        merge_and_unload(model)
        assert not adapter_layers(model)
        assert isinstance(model.roberta.encoder.layer[0].attention.self.query, nn.Linear)
        # (W₀+ΔW)x vs W₀x + ΔW·x: the forward's sums in another order, plus ΔW's own (≤ 32 terms here)
        assert_fp32_close(model(**batch).logits, adapted, terms=forward_terms(model, batch) + 32)


def test_conv1d_base_layer():
    """GPT-2 style Conv1D (weight stored in × out) behaves like the equivalent Linear."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(36, 24)  # nf=out=36, nx=in=24
    linear = nn.Linear(24, 36)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    x = torch.randn(2, 3, 24)
    for cls, kw in [(LoRALinear, dict(r=4)), (LSRLinear, dict(r=2, num_terms=2))]:
        a, b = cls(conv, **kw), cls(linear, **kw)
        _randomize(a)
        _randomize(b)
        adapter_terms = 8  # ΔW: LoRA r = 4 products; LSR t·2r = 8
        # Conv1D (x·W, addmm) vs Linear (x·Wᵀ): another kernel over the 24 inputs, plus the adapter
        assert_fp32_close(a(x), b(x), terms=24 + adapter_terms)
        assert_fp32_close(a.delta_weight(), b.delta_weight(), terms=adapter_terms)
        y = a(x)
        a.merge()
        assert_fp32_close(a(x), y, terms=24 + adapter_terms)  # (W₀+ΔW)x vs W₀x + ΔW·x
        a.unmerge()
        assert torch.equal(a.base_layer.weight, linear.weight.T)


def test_only_adapter_and_head_get_gradients():
    from lsr_adapt.modeling import prepare_model

    for method in ("lora", "lsr"):
        loaded = tiny_classifier()
        prepared = prepare_model(loaded, method, None, ["query", "value"])
        model = loaded.model.train()
        batch = tiny_batch(loaded.tokenizer)
        model(**batch, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        adapters = {f"{ln}.{pn}" for ln, layer in adapter_layers(model).items() for pn in layer.adapter_parameters()}
        assert with_grad == adapters | set(prepared.head_names)
        assert all(n.startswith("classifier.") for n in prepared.head_names)
        counts = prepared.counts
        assert counts["trainable_params"] == counts["adapter_params"] + counts["head_params"]


@pytest.mark.parametrize("with_pooler", [False, True])
def test_bert_pooler_trains_with_the_head(tmp_path, with_pooler):
    """A checkpoint without a pooler gets a random one, and a sentence-embedding checkpoint's
    pooler was never trained for classification: either way it trains, counted as head."""
    from transformers import BertConfig, BertModel

    from lsr_adapt.modeling import load_classifier, prepare_model
    from lsr_adapt.smoke import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, pad_token_id=0)
    BertModel(cfg, add_pooling_layer=with_pooler).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_classifier(str(tmp_path), 2)
    assert ("bert.pooler.dense.weight" in loaded.new_param_names) is not with_pooler
    prepared = prepare_model(loaded, "lora", None, None)  # bert default targets: query, value
    assert {"bert.pooler.dense.weight", "bert.pooler.dense.bias"} <= set(prepared.head_names)
    assert loaded.model.bert.pooler.dense.weight.requires_grad


def test_target_modules_errors_list_available_layers():
    loaded = tiny_classifier()
    with pytest.raises(LsrAdaptError, match=r"matched no Linear layer; the model's Linear layers are: query, key, value"):
        replace_linear_with_lora(loaded.model, ["qkv"])
    model = replace_linear_with_lora(loaded.model, "all-linear")
    assert len(adapter_layers(model)) == 2 * 6 + 2  # 6 Linear per layer, plus the head's 2 (no exclude here)


# -- end to end through train() --------------------------------------------------------------------


SLOW = pytest.mark.slow  # covered by the unit tests above; end to end in the slow suite


@pytest.mark.parametrize("model_cfg", ["adapter=dora", "adapter=full", "adapter=head",
                                       pytest.param("adapter=lora_fa", marks=SLOW),
                                       pytest.param("adapter=rslora", marks=SLOW),
                                       pytest.param("adapter=lsr_plus", marks=SLOW)])
def test_train_writes_results(model_cfg, tmp_path):
    results = run_train(tmp_path, model_cfg, *FAST)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "completed" and saved["adaptation_type"] == results["adaptation_type"]
    assert len(saved["eval_history"]) == 1
    if model_cfg == "adapter=full":
        assert saved["trainable_params"] == saved["total_params"]
    if model_cfg == "adapter=head":
        assert saved["trainable_params"] == saved["head_params"] and saved["adapter_params"] == 0


@pytest.mark.slow
def test_cli_multirun_over_the_family(tmp_path):
    """The comparison the issue asks for, through the real CLI: one results.json per job."""
    import subprocess

    adapters = "lora,lsr,dora,lora_plus,lora_fa,dylora,full,head"
    cmd = [sys.executable, "main.py", "experiment=smoke", "--multirun", f"adapter={adapters}", *FAST,
           "training.report_to=none", f"hydra.sweep.dir={tmp_path}"]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    done = sorted(json.loads(f.read_text())["adaptation_type"] for f in tmp_path.glob("*/results.json"))
    assert done == sorted(["lora", "lsr", "dora", "lora_plus", "lora_fa", "dylora", "full", "head"])
