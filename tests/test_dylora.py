"""adapters/dylora.py: DyLoRA's rank-b slices against plain rank-b LoRA, one shared rank per training step,
no graph breaks or recompiles, the per-rank evaluation hook, and its rank table through train()."""

from __future__ import annotations

import copy

import pytest
import torch
from adapter_cases import FAST, R, _logits, _perturb, _prepared
from helpers import run_train, tiny_batch
from tolerances import assert_fp32_close, forward_terms
from torch import nn

from lsr_adapt import LoRALinear, LsrAdaptError
from lsr_adapt.adapters import METHODS, adapter_layers
from lsr_adapt.adapters.dylora import dylora_layers, rank_metrics, set_rank


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


def test_train_dylora_records_a_rank_table(tmp_path):
    results = run_train(tmp_path, "adapter=dylora", *FAST, "model.dylora.r=3")
    table = results["rank_metrics"]
    assert list(table) == ["1", "2", "3"] and all("accuracy" in m for m in table.values())
    assert results["eval_rank"] == 3
    assert len(results["eval_history"]) == 1  # the rank evaluations are not epochs
    # the full-rank row is the restored best model's own validation score
    assert table["3"]["accuracy"] == pytest.approx(results["best_metric"])
