"""adapters/baselines.py: full fine-tuning and head-only train exactly the parameters they name."""

from __future__ import annotations

import pytest
import torch
from adapter_cases import _logits, _prepared, _trainable_names
from helpers import tiny_batch

from lsr_adapt import LsrAdaptError
from lsr_adapt.adapters import METHODS, adapter_layers


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
