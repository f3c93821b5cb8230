"""adapters/lora_plus.py: LoRA+ / LSR+ parameter groups (B's learning rate × lr_ratio), kept by the Trainer's
optimizer and schedule."""

from __future__ import annotations

import pytest
from adapter_cases import FAST, METHOD_CASES, _prepared
from helpers import run_train

from lsr_adapt.adapters import METHODS
from lsr_adapt.adapters.lora_plus import lora_plus_param_groups


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
    results = run_train(tmp_path, "adapter=lora_plus", *FAST, "training.warmup_ratio=0.25")
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
