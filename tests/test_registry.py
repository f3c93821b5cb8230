"""adapters/registry.py: adding a method is one layer class, one register_method call and one YAML file."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from adapter_cases import FAST
from helpers import run_train
from torch import nn

from lsr_adapt.adapters import AdapterLayer
from lsr_adapt.adapters import registry as registry_mod


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
    (conf / "adapter" / "toy_scale.yaml").write_text(
        "# @package model\ntoy_scale:\n  init: 0.0\nadaptation_type: toy_scale\n")
    results = run_train(tmp_path / "run", f"hydra.searchpath=[file://{conf}]", "adapter=toy_scale", *FAST)
    assert results["adaptation_type"] == "toy_scale"
    assert results["adapter_params"] == 4 * 32  # one scale per output of q and v in 2 layers
    assert results["trainable_params"] == 4 * 32 + results["head_params"]
    assert results["method_config"] == {"init": 0.0}
