"""LoRA and LSR layers against independent references: HF peft, dense torch.kron, formulas."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_batch, tiny_classifier
from tolerances import assert_fp32_close, forward_terms
from torch import nn

from lsr_adapt import LoRALinear, LsrAdaptError, LSRLinear, replace_linear_with_lora, replace_linear_with_lsr
from lsr_adapt.adapters import adapter_layers, factorize, merge_and_unload
from lsr_adapt.adapters.lsr import PATHS


def _randomize(layer: nn.Module, seed: int = 0) -> None:
    """Give every adapter parameter random values (ΔW = 0 at init would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.adapter_parameters().values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def lsr_dense_reference(layer: LSRLinear) -> torch.Tensor:
    """ΔW built term by term with torch.kron, straight from the definition."""
    a1, a2, b1, b2 = layer.lsr_A1, layer.lsr_A2, layer.lsr_B1, layer.lsr_B2
    t = layer.num_terms
    if layer.form == "sum":
        delta = sum(torch.kron(b1[i] @ a1[i], b2[i] @ a2[i]) for i in range(t))
    else:
        delta = sum(torch.kron(b1[i], b2[i]) for i in range(t)) @ sum(torch.kron(a1[i], a2[i]) for i in range(t))
    return delta * layer.scaling


# -- parameter counts ----------------------------------------------------------------------------

def test_parameter_counts_match_formulas():
    base = nn.Linear(768, 768)
    assert LoRALinear(base, r=8).num_adapter_params() == 8 * (768 + 768) == 12_288
    assert LoRALinear(base, r=16).num_adapter_params() == 24_576
    lsr = LSRLinear(base, r=2, num_terms=16)
    assert (lsr.d1, lsr.d2, lsr.k1, lsr.k2) == (32, 24, 32, 24)
    assert lsr.num_adapter_params() == 16 * 2 * (32 + 24 + 32 + 24) == 3_584
    ffn = LSRLinear(nn.Linear(768, 3072), r=2, num_terms=16)
    assert (ffn.k1, ffn.k2) == (64, 48)
    assert ffn.num_adapter_params() == 16 * 2 * (32 + 24 + 64 + 48)


def test_roberta_base_query_value_counts():
    """The numbers in the README: RoBERTa-base q,v over 12 layers."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    cfg = RobertaConfig(vocab_size=100, num_labels=2)  # RoBERTa-base shapes; a small vocab keeps it light
    model = RobertaForSequenceClassification(cfg)
    lora = replace_linear_with_lora(copy.deepcopy(model), ["query", "value"], r=8, alpha=8)
    lsr = replace_linear_with_lsr(model, ["query", "value"], r=2, num_terms=16, alpha=2)
    count = lambda m: sum(layer.num_adapter_params() for layer in adapter_layers(m).values())  # noqa: E731
    assert len(adapter_layers(lora)) == 24
    assert count(lora) == 294_912
    assert count(lsr) == 86_016


def test_factorize_and_bad_factors():
    assert factorize(768) == (32, 24)
    assert factorize(3072) == (64, 48)
    assert factorize(384) == (24, 16)
    with pytest.raises(LsrAdaptError, match=r"cannot factor the input dim 97 of layer enc.q"):
        LSRLinear(nn.Linear(97, 64), name="enc.q")
    with pytest.raises(LsrAdaptError, match=r"factors \[5, 5\] do not multiply to the input dim 64 of layer q"):
        LSRLinear(nn.Linear(64, 64), in_factors=[5, 5], name="q")
    with pytest.raises(LsrAdaptError, match=r"rank r=9 exceeds the smallest Kronecker factor \(8\) of layer q"):
        LSRLinear(nn.Linear(64, 64), r=9, name="q")
    with pytest.raises(LsrAdaptError, match="unknown LSR form 'diag'; valid choices: sum, product"):
        LSRLinear(nn.Linear(64, 64), form="diag")


# -- exactness -----------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["sum", "product"])
@pytest.mark.parametrize("path", [p for p in PATHS if p != "auto"])
def test_lsr_matches_dense_kron_reference(form, path):
    torch.manual_seed(0)
    base = nn.Linear(24, 35)  # in 6×4, out 7×5: unequal factors catch transposed indices
    layer = LSRLinear(base, r=2, num_terms=3, form=form, path=path)
    assert (layer.d1, layer.d2, layer.k1, layer.k2) == (6, 4, 7, 5)
    _randomize(layer)
    ref = lsr_dense_reference(layer)
    # each ΔW entry: t Kronecker terms, each a product of two r-term sums, then the scaling
    kron_terms = layer.num_terms * 2 * layer.r + 1
    assert_fp32_close(layer.delta_weight(), ref, terms=kron_terms)
    x = torch.randn(3, 5, 24)
    assert_fp32_close(layer(x), base(x) + x @ ref.T, terms=24 + kron_terms)  # + the 24 inputs of the matmul


def test_lsr_explicit_factors_and_auto_path():
    layer = LSRLinear(nn.Linear(768, 768), r=2, num_terms=16, in_factors=[48, 16], out_factors=[24, 32])
    assert (layer.d1, layer.d2, layer.k1, layer.k2) == (48, 16, 24, 32)
    assert layer.path == "factored"  # R = 64: 3·64·1536 ≤ 768²
    assert LSRLinear(nn.Linear(768, 768), r=8, num_terms=16).path == "dense"  # R = 1024
    assert LSRLinear(nn.Linear(768, 768), r=8, num_terms=16, form="product").path == "factored"  # R = 64


def test_lora_matches_peft_on_same_weights():
    peft = pytest.importorskip("peft")
    loaded = tiny_classifier()
    model = loaded.model.eval()
    reference = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0, init_lora_weights=False))
    ours = replace_linear_with_lora(model, ["query", "value"], r=4, alpha=8)
    peft_state = reference.state_dict()
    for name, layer in adapter_layers(ours).items():
        prefix = f"base_model.model.{name}"
        with torch.no_grad():
            layer.lora_A.copy_(peft_state[f"{prefix}.lora_A.default.weight"])
            layer.lora_B.copy_(peft_state[f"{prefix}.lora_B.default.weight"])
        assert layer.lora_B.abs().sum() > 0  # init_lora_weights=False: a non-trivial ΔW
    batch = tiny_batch(loaded.tokenizer)
    with torch.no_grad():
        # peft's LoRA forward: the same sums in its own order along the whole network
        assert_fp32_close(ours(**batch).logits, reference.eval()(**batch).logits, terms=forward_terms(model, batch))


# -- behaviour on a model ------------------------------------------------------------------------

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


def test_lsr_factors_every_linear_layer_of_smollm2():
    """SmolLM2-135M's layers (hidden 576, 3 KV heads × 64 = 192, MLP 1536): every one factors, and
    the layer's ΔW equals the dense Kronecker sum it stands for (the reference: torch.kron)."""
    from lsr_adapt.adapters.lsr import factorize

    assert [factorize(n) for n in (576, 192, 1536)] == [(24, 24), (16, 12), (48, 32)]
    torch.manual_seed(0)
    for in_f, out_f in [(576, 576), (576, 192), (576, 1536), (1536, 576)]:
        layer = LSRLinear(nn.Linear(in_f, out_f), r=2, num_terms=3)
        with torch.no_grad():
            for p in layer.adapter_parameters().values():
                p.normal_()
        want = sum(torch.kron(layer.lsr_B1[i] @ layer.lsr_A1[i], layer.lsr_B2[i] @ layer.lsr_A2[i])
                   for i in range(3)) * layer.scaling
        # fp32; each entry sums 3 products of r=2 terms each way: rounding ~1e-6 relative to |ΔW|
        torch.testing.assert_close(layer.delta_weight(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
