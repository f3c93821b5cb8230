"""Shared fixtures: composed real configs, tiny random-init models, a hermetic cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    """Tiny checkpoints and synthetic data go to a per-session dir (subprocesses inherit it)."""
    old = os.environ.get("LSR_ADAPT_CACHE")
    os.environ["LSR_ADAPT_CACHE"] = str(tmp_path_factory.mktemp("lsr_adapt_cache"))
    yield
    if old is None:
        os.environ.pop("LSR_ADAPT_CACHE", None)
    else:
        os.environ["LSR_ADAPT_CACHE"] = old


def compose(*overrides: str):
    """The real config tree, composed as ``python main.py <overrides>`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def run_train(tmp_path: Path, *overrides: str) -> dict:
    """``train(cfg)`` on a composed smoke config, writing into ``tmp_path``."""
    from lsr_adapt.training import train

    cfg = compose("experiment=smoke", f"output_dir={tmp_path}", "training.report_to=none", *overrides)
    return train(cfg)


def tiny_classifier(family: str = "roberta", num_labels: int = 2):
    """A tiny random-init HF classifier loaded the way train() loads models."""
    from lsr_adapt.modeling import load_classifier
    from lsr_adapt.smoke import tiny_checkpoint

    torch.manual_seed(0)
    return load_classifier(str(tiny_checkpoint(family)), num_labels)


def tiny_batch(tokenizer, n: int = 4, seed: int = 0):
    from lsr_adapt.smoke import WORDS

    g = torch.Generator().manual_seed(seed)
    texts = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (8,), generator=g).tolist()) for _ in range(n)]
    return tokenizer(texts, padding=True, return_tensors="pt")
