"""adapters/dora.py: DoRALinear against HF peft (outputs and gradients, with rsLoRA and with dropout), and its
training step forms no dense ΔW per token."""

from __future__ import annotations

import pytest
import torch
from adapter_cases import R, _peft_twin, _perturb, _prepared
from helpers import tiny_batch
from tolerances import assert_fp32_close, forward_terms
from torch import nn


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
