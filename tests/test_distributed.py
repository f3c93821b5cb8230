"""Multi-process training on CPU (torchrun, gloo): same result as one process, rank 0 writes, one run dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, run_train

from lsr_adapt import LsrAdaptError
from lsr_adapt.distributed import hydra_overrides_for_rank

# the launchers as modules of this interpreter: no dependence on console scripts being on PATH
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
# dropout off: the two ranks' masks cannot match one process's; 61 validation examples do not split
# evenly over 2 ranks, so a duplicated or dropped example would change the metrics
EXACT = ["experiment=smoke", "logger=none", "training.num_train_epochs=2", "training.disable_dropout=true",
         "training.learning_rate=2e-3",  # smoke's 1e-2 (×16 for LoRA+'s B) amplifies float-order noise
         "data.synthetic_sizes={train:512,validation:61,test:64}"]


# test-only: accelerate applies FSDP to GPU processes only; this sitecustomize lets it shard CPU ones
FSDP_ON_CPU = str(ROOT / "tests" / "fsdp_cpu")


def _launch(cwd: Path, nproc: int, *overrides: str, launcher: str = "torchrun", fsdp_on_cpu: bool = False,
            env_extra: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    path = [FSDP_ON_CPU] if fsdp_on_cpu else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([*path, str(ROOT / "tests")]),
           **(env_extra or {})}
    if nproc == 1:
        command = [sys.executable, str(ROOT / "main.py")]
    elif launcher == "accelerate":  # --multi_gpu is accelerate's multi-process DDP; on CPU it uses gloo
        command = [*ACCELERATE, "--multi_gpu", f"--num_processes={nproc}", "--num_machines=1",
                   "--mixed_precision=no", "--dynamo_backend=no", str(ROOT / "main.py")]
    else:
        command = [*TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", str(ROOT / "main.py")]
    out = subprocess.run([*command, *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def _run_dir(cwd: Path) -> Path:
    """The one run dir Hydra made under ``cwd/outputs/<date>/<time>``."""
    dirs = [d for d in (cwd / "outputs").glob("*/*") if d.is_dir()]
    assert len(dirs) == 1, dirs  # every rank wrote into rank 0's dir
    return dirs[0]


def _compare(one: Path, two: Path) -> None:
    from safetensors.torch import load_file

    a, b = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith("attention.self.key.bias"):
            # its true gradient is 0 (softmax ignores a shift shared by all keys); Adam turns the float
            # noise it gets into lr-sized steps whose signs depend on summation order
            continue
        # float-order noise over 64 Adam steps stays below 5e-5; unsynchronised gradients give ~1e-1
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=5e-5, msg=k)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert (ra["world_size"], rb["world_size"]) == (1, 2)
    assert [e["step"] for e in ra["eval_history"]] == [e["step"] for e in rb["eval_history"]]  # global batch kept
    for ea, eb in zip(ra["eval_history"], rb["eval_history"], strict=True):
        # weights within 5e-5 (above): the mean validation loss, O(1) and Lipschitz in them, within ~2×
        assert ea["accuracy"] == eb["accuracy"] and ea["loss"] == pytest.approx(eb["loss"], abs=1e-4)
    assert ra["test_metrics"]["accuracy"] == rb["test_metrics"]["accuracy"]


# every method under `-m slow` (each launch pair costs ~20 s of the 2-core default budget); the default
# suite keeps the in-process distributed checks (gradient accumulation, gradient checkpointing)
METHODS = []
SLOW_METHODS = ["model=roberta_lora", "adapter=dylora", "adapter=lora_fa", "adapter=dora", "adapter=lora_plus",
                "adapter=lsr_plus", "adapter=rslora", "adapter=full", "adapter=head", "adapter=qlora"]
# the tiny model's in_features is 32: bitsandbytes' CPU kernels need a blocksize that divides it
EXTRA = {"adapter=qlora": ["model.qlora.blocksize=32"]}


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) for m in ["model=roberta_lsr", *SLOW_METHODS]])
def test_torchrun_two_processes_match_one_process(tmp_path, model):
    """The issue's test: `torchrun --nproc_per_node 2` (gloo) == one process with the same global batch."""
    if model == "adapter=qlora":
        pytest.importorskip("bitsandbytes")
    _launch(tmp_path / "one", 1, *EXACT, model, *EXTRA.get(model, []))
    _launch(tmp_path / "two", 2, *EXACT, model, *EXTRA.get(model, []))
    one, two = _run_dir(tmp_path / "one"), _run_dir(tmp_path / "two")
    _compare(one, two)
    assert len(list(two.rglob(".hydra"))) == 1 and len(list(two.rglob("*.log"))) == 1  # rank 0's only
    assert not list(two.glob("checkpoint-*"))


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_accelerate_launch_two_processes_match_one_process(tmp_path):
    _launch(tmp_path / "one", 1, *EXACT, "model=roberta_lsr")
    _launch(tmp_path / "two", 2, *EXACT, "model=roberta_lsr", launcher="accelerate")
    _compare(_run_dir(tmp_path / "one"), _run_dir(tmp_path / "two"))


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_torchrun_with_gradient_accumulation_and_checkpointing(tmp_path):
    """2 processes × 2 accumulation steps × 4 per device == one process with batch 16; checkpoints
    (every rank's RNG file) and non-reentrant activation checkpointing work under DDP too."""
    extra = ["model=roberta_lsr", "training.checkpoint_every=8", "training.gradient_checkpointing=true"]
    _launch(tmp_path / "one", 1, *EXACT, "model=roberta_lsr")
    cfg = [*EXACT, *extra, "training.gradient_accumulation_steps=2", "hydra.run.dir=two",
           "training.callbacks=[{_target_:faults.KillAtStep,step:20}]"]
    env_kill = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node=2", str(ROOT / "main.py"), *cfg],
                              cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", "LSR_TEST_KILL": "1",
                                                 "PYTHONPATH": str(ROOT / "tests")},
                              capture_output=True, text=True, timeout=600)
    assert env_kill.returncode != 0  # both ranks are gone: torchrun reports the killed worker
    two = tmp_path / "two"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (two / "checkpoint-16").iterdir()}
    _launch(tmp_path, 2, *cfg)  # the same command resumes
    assert json.loads((two / "results.json").read_text())["resumed_from"].endswith("checkpoint-16")
    _compare(_run_dir(tmp_path / "one"), two)


def test_gradient_accumulation_keeps_the_global_batch(tmp_path):
    """One process, batch 16 as 2 × 8: the same weights as 1 × 16 (the classification loss is a mean)."""
    from safetensors.torch import load_file

    exact = [o for o in EXACT[1:] if not o.startswith("data.")]
    run_train(tmp_path / "a", *exact)
    run_train(tmp_path / "b", *exact, "training.gradient_accumulation_steps=2")
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in "ab")
    for k in a:
        # 2 × 8 vs 1 × 16: the batch-mean gradient summed in another order (~16·eps32 relative), which
        # Adam's normalised steps carry through training; a lost half batch moves weights by ~lr = 1e-2
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["model=roberta_lora", "model=roberta_lsr", *[pytest.param(m, marks=pytest.mark.slow)
                                                                     for m in ("adapter=dylora", "adapter=dora", "adapter=lora_fa")]])
def test_non_reentrant_gradient_checkpointing_changes_nothing_but_memory(tmp_path, model):
    from safetensors.torch import load_file

    exact = [o for o in EXACT[1:] if not o.startswith("data.")] + [model, "training.num_train_epochs=1"]
    run_train(tmp_path / "plain", *exact)
    run_train(tmp_path / "ckpt", *exact, "training.gradient_checkpointing=true",
              "training.callbacks=[{_target_:faults.RequireGradientCheckpointing}]")
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("plain", "ckpt"))
    for k in a:
        # the recomputed forward runs the same kernels on the same values: identical in practice; 1e-6 is
        # one rounding of these O(1) weights, a missing or doubled gradient moves them by ~lr = 1e-2
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_global_batch_must_divide_evenly(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(LsrAdaptError, match=r"batch_size=16 is not divisible by 3 process\(es\) × .*=1"):
        run_train(tmp_path, "training.num_train_epochs=1")


def test_only_rank_0_writes_hydra_files(monkeypatch):
    argv = ["model=roberta_lsr"]
    assert hydra_overrides_for_rank(argv) == argv
    monkeypatch.setenv("RANK", "1")
    assert hydra_overrides_for_rank(argv) == [*argv, "hydra.output_subdir=null", "hydra/job_logging=disabled"]


@pytest.mark.parametrize("command", [
    "model=roberta_lsr data=sst2",
    "adapter=full data=mnli hydra.run.dir=runs/mnli-full",
    "model=roberta_lora data=mnli training.fsdp=true",
    "-m hydra/launcher=slurm hydra.launcher.partition=gpu model=roberta_lora,roberta_lsr training.seed=0,1,2",
])
def test_readme_scale_out_commands_compose(command):
    """The README's torchrun / accelerate / Slurm lines, after `main.py`, compose as each of their jobs."""
    from itertools import product

    from helpers import compose

    args = [a for a in command.split() if not a.startswith("-")]
    sweeps = [[f"{a.split('=')[0]}={v}" for v in a.split("=", 1)[1].split(",")] for a in args]
    for job in product(*sweeps):
        cfg = compose(*[a for a in job if not a.startswith("hydra")])
        assert cfg.training.batch_size == 16 and cfg.training.resume == "auto"


# -- FSDP (training.fsdp=true): the Trainer's FSDP2 through accelerate --------------------------------
FSDP_SLOW = ["model=roberta_lora", "adapter=dora", "adapter=dylora", "adapter=lora_fa", "adapter=rslora", "adapter=full",
             "adapter=head"]


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
@pytest.mark.parametrize("model", ["model=roberta_lsr", *FSDP_SLOW])
def test_fsdp_two_processes_match_one_process(tmp_path, model):
    """Sharded parameters, sharded optimizer, best-epoch restore into shards, whole weights gathered
    for the adapter and its base fingerprint: the same files as one unsharded process."""
    _launch(tmp_path / "one", 1, *EXACT, model)
    _launch(tmp_path / "two", 2, *EXACT, model, "training.fsdp=true", fsdp_on_cpu=True)
    one, two = _run_dir(tmp_path / "one"), _run_dir(tmp_path / "two")
    _compare(one, two)
    from lsr_adapt.artifacts import read_adapter_config

    # lsr-adapt's record of each run (lsr_adapt_config.json beside peft's files for the LoRA family)
    ca, cb = (read_adapter_config(d) for d in (one, two))
    assert ca["base_fingerprint"] == cb["base_fingerprint"]  # the gathered base, not one rank's shard


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_fsdp_killed_run_resumes_from_its_sharded_checkpoint(tmp_path):
    """LoRA+ (its own optimizer groups, which FSDP needs built by the Trainer) under FSDP, SIGKILLed
    after step 20 and re-run: the checkpoint's sharded optimizer state is restored and the result
    equals one uninterrupted process."""
    cfg = [*EXACT, "adapter=lora_plus", "training.fsdp=true", "training.checkpoint_every=8",
           "hydra.run.dir=two", "training.callbacks=[{_target_:faults.KillAtStep,step:20}]"]
    killed = _launch(tmp_path, 2, *cfg, fsdp_on_cpu=True, env_extra={"LSR_TEST_KILL": "1"}, check=False)
    assert killed.returncode != 0
    two = tmp_path / "two"
    assert (two / "checkpoint-16" / "manifest.json").is_file()
    _launch(tmp_path, 2, *cfg, fsdp_on_cpu=True)  # the same command resumes
    assert json.loads((two / "results.json").read_text())["resumed_from"].endswith("checkpoint-16")
    _launch(tmp_path / "one", 1, *EXACT, "adapter=lora_plus")
    _compare(_run_dir(tmp_path / "one"), two)


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_fsdp_that_accelerate_does_not_apply_is_an_error_not_silent_ddp(tmp_path):
    """Without GPUs accelerate leaves FSDP off; the run must say so instead of training with DDP."""
    out = _launch(tmp_path, 2, *EXACT, "model=roberta_lora", "training.fsdp=true", check=False)
    assert out.returncode != 0
    assert "training.fsdp=true but accelerate did not enable FSDP for these 2 cpu processes" in out.stderr
    assert "src/lsr_adapt" not in out.stderr  # a one-line error from each rank (torchrun adds its own report)


def test_fsdp_setting_is_checked(monkeypatch):
    from lsr_adapt.training.arguments import fsdp_args as _fsdp_args

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LsrAdaptError, match="training.fsdp='yes'; valid choices: true, false"):
        _fsdp_args("yes", torch.nn.Linear(2, 2))
    blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()) for _ in range(2)])
    small = torch.nn.ModuleList([torch.nn.Linear(2, 1) for _ in range(2)])  # e.g. an adapter's factors
    model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(4, 8), "blocks": blocks, "small": small})
    args = _fsdp_args(True, model)
    assert args["fsdp"] is True and args["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["Sequential"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _fsdp_args(True, model) == {}  # one process: nothing to shard
