"""Shared test helpers (not fixtures, which stay in conftest.py): the repo's paths, composed real configs,
tiny random-init models and batches, the shared small run, the CLI as a user runs it, and the one-line
error contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose(*overrides: str):
    """The real config tree, composed as ``python main.py <overrides>`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def sweeper_params(*overrides: str) -> dict:
    """``hydra.sweeper.params`` of a composed experiment (what its multirun sweeps)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    assert "report" in cfg.hydra.callbacks  # the comparison report at the end of the sweep
    return {k: str(v) for k, v in OmegaConf.to_container(cfg.hydra.sweeper.params).items()}


def resolved_data(data_cfg):
    """A composed ``data`` section as a run loads it: a generated sample or an asset resolved to its
    files (``sources.resolve_data``, what train() and predict do when they start)."""
    from lsr_adapt.sources import resolve_data
    from lsr_adapt.tasks import get_task

    return resolve_data(data_cfg, get_task(data_cfg))


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


# The one small run the tests share: a tiny random-init RoBERTa on a small generated MRPC sample,
# one epoch (seconds on 2 CPU cores).
SMALL_RUN = ("training.num_train_epochs=1", "data.synthetic_sizes.train=48", "data.synthetic_sizes.validation=24",
             "data.synthetic_sizes.test=16", "training.batch_size=8")


def cli(*args: str, module: str | None = None, cwd: Path = ROOT, timeout: int = 600,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """``python main.py ARGS`` (or ``python -m MODULE ARGS``) as a user runs it, output captured."""
    cmd = [sys.executable, "-m", module, *args] if module else [sys.executable, str(ROOT / "main.py"), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, *words, run_dir: Path | None = None) -> str:
    """The error contract: exit status 2, no traceback, the last stderr line is ``error: ...`` naming
    ``words``; with ``run_dir``, no results or adapter written there."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
    assert all(str(w) in lines[-1] for w in words), lines[-1]
    if run_dir is not None:
        for name in ("results.json", "adapter_model.safetensors", "adapter_config.json"):
            assert not (Path(run_dir) / name).exists(), name
    return lines[-1]
