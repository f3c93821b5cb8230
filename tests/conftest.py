"""Shared fixtures: a hermetic cache, MiniLM-L6's target shapes. Shared helpers (paths, composed
configs, tiny models, the CLI) are in helpers.py."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config):
    """An xdist worker (the default suite runs on two, ``-n 2`` in pyproject.toml): one intra-op thread
    each, and for the CLI processes its tests start. On the tiny test models a second thread costs more
    than it gives, and two single-threaded workers keep both cores busy: 290 s -> 155 s on 2 cores."""
    if hasattr(config, "workerinput"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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


@pytest.fixture(scope="session")
def minilm_shapes():
    """MiniLM-L6's query and value layers (all-MiniLM-L6-v2's config: 6 layers, hidden 384), built on the meta device."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, num_labels=2)
    from lsr_adapt.budget import target_shapes

    with torch.device("meta"):
        model = BertForSequenceClassification(config)
    return target_shapes(model, ["query", "value"])
