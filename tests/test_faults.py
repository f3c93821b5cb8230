"""Preemption-safe runs: checkpoints, resume after SIGKILL / a crash / a corrupt checkpoint, NaN losses."""

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
from lsr_adapt.training.checkpoints import MANIFEST, WEIGHTS, checkpoint_dirs, checkpoint_problem
from lsr_adapt.training.trainer import NonFiniteLoss

SMOKE = ["experiment=smoke", "logger=none", "training.num_train_epochs=2", "training.checkpoint_every=5"]


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter_model.safetensors")


def _same_run(a: dict, b: dict, logged_loss: bool = True) -> None:
    """Same metrics epoch by epoch and on the test split (wall-clock fields aside). ``logged_loss``
    False: the Trainer's running training loss is not compared (it restarts its averaging window at
    a resume, so a resume between two logging steps changes the mean logged at the next one)."""
    skip = {"elapsed_s"} if logged_loss else {"elapsed_s", "train_loss"}
    strip = [[{k: v for k, v in e.items() if k not in skip} for e in r["eval_history"]] for r in (a, b)]
    assert strip[0] == strip[1]
    assert a["test_metrics"] == b["test_metrics"] and a["best_epoch"] == b["best_epoch"]
    assert a["metric_before_training"] == b["metric_before_training"]


def _assert_no_partial_files(run_dir: Path) -> None:
    """Every file a killed run left is whole: JSON parses, safetensors load, checkpoints match manifests."""
    from safetensors.torch import load_file

    assert not list(run_dir.rglob(".*.tmp")), "a temp file of an atomic write was left behind"
    for f in run_dir.rglob("*.json"):
        json.loads(f.read_text())
    for f in run_dir.rglob("*.safetensors"):
        load_file(f)
    for ckpt in checkpoint_dirs(run_dir):
        assert checkpoint_problem(ckpt) is None, ckpt


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_sigkill_mid_training_then_same_command_resumes_to_the_same_result(tmp_path):
    """The issue's test: SIGKILL after step 23 (mid epoch 1), re-run the same command, same weights and metrics."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    # dropout stays on: the resumed run restores the RNG states too
    command = [sys.executable, str(ROOT / "main.py"), *SMOKE, "training.callbacks=[{_target_:faults.KillAtStep,step:23}]"]
    whole = subprocess.run([*command, f"hydra.run.dir={tmp_path / 'whole'}"], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]

    run = tmp_path / "killed"
    killed = subprocess.run([*command, f"hydra.run.dir={run}"], env={**env, "LSR_TEST_KILL": "1"},
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (run / "results.json").exists()
    assert [c.name for c in checkpoint_dirs(run)] == ["checkpoint-20", "checkpoint-15"]  # keep_checkpoints: 2
    _assert_no_partial_files(run)

    resumed = subprocess.run([*command, f"hydra.run.dir={run}"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (json.loads((d / "results.json").read_text()) for d in (run, tmp_path / "whole"))
    assert a["resumed_from"] == str(run / "checkpoint-20") and b["resumed_from"] is None
    _same_run(a, b)
    wa, wb = _weights(run), _weights(tmp_path / "whole")
    assert wa.keys() == wb.keys()
    for k in wa:
        # resume replays the same float32 ops on state restored bit for bit (measured identical on CPU);
        # 1e-6 is one rounding of these O(1) weights, a lost or repeated step moves them by ~lr·|update|
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    assert not checkpoint_dirs(run), "a finished run keeps no checkpoints"


def _crash_then_resume(tmp_path, crash_step: int, *overrides, corrupt=None, caplog=None):
    run = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="injected crash"):
        run_train(run, *SMOKE[1:], f"training.callbacks=[{{_target_:faults.CrashAtStep,step:{crash_step}}}]", *overrides)
    if corrupt:
        corrupt(run)
    return run, run_train(run, *SMOKE[1:], *overrides)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    whole = run_train(tmp_path / "whole", *SMOKE[1:])

    def truncate_newest(run):
        newest = checkpoint_dirs(run)[0]
        assert newest.name == "checkpoint-40"
        f = newest / WEIGHTS
        f.write_bytes(f.read_bytes()[:-7])

    with caplog.at_level("WARNING", logger="lsr_adapt.training.checkpoints"):
        run, resumed = _crash_then_resume(tmp_path, 42, corrupt=truncate_newest)
    assert "skipping checkpoint" in caplog.text and "checkpoint-40" in caplog.text
    assert resumed["resumed_from"].endswith("checkpoint-35")
    _same_run(resumed, whole)
    wa, wb = _weights(run), _weights(tmp_path / "whole")
    for k in wa:
        # resume replays the same float32 ops on state restored bit for bit (measured identical on CPU);
        # 1e-6 is one rounding of these O(1) weights, a lost or repeated step moves them by ~lr·|update|
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def test_a_checkpoint_without_its_manifest_is_not_resumed_from(tmp_path):
    def drop_manifests(run):
        for ckpt in checkpoint_dirs(run):
            (ckpt / MANIFEST).unlink()

    run, resumed = _crash_then_resume(tmp_path, 12, corrupt=drop_manifests)
    assert resumed["resumed_from"] is None  # nothing intact: trained from the start


def test_checkpoints_hold_only_trainable_weights_and_keep_the_last_k(tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "crashed"
    with pytest.raises(RuntimeError):
        run_train(run, *SMOKE[1:], "training.keep_checkpoints=3",
                  "training.callbacks=[{_target_:faults.CrashAtStep,step:37}]")
    assert [c.name for c in checkpoint_dirs(run)] == ["checkpoint-35", "checkpoint-30", "checkpoint-25"]
    ckpt = checkpoint_dirs(run)[0]
    saved = load_file(ckpt / WEIGHTS)
    adapter = load_file(run / "adapter_model.safetensors") if (run / "adapter_model.safetensors").exists() else None
    assert adapter is None  # the run did not finish
    assert all("lora_" in n or "classifier" in n for n in saved)  # adapter + head, no frozen base weight
    names = {p.name for p in ckpt.iterdir()}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", MANIFEST} <= names
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 35
    # the epoch-1 evaluation (step 32) travels in the checkpoint, with the evaluation before training
    state = json.loads((ckpt / "lsr_adapt_state.json").read_text())
    assert [e["epoch"] for e in state["history"]] == [1] and state["before"]["metrics"]["accuracy"] >= 0


def test_resume_refuses_a_run_dir_of_another_config(tmp_path):
    run = tmp_path / "crashed"
    with pytest.raises(RuntimeError):
        run_train(run, *SMOKE[1:], "training.callbacks=[{_target_:faults.CrashAtStep,step:12}]")
    with pytest.raises(LsrAdaptError, match="another config.*training.learning_rate"):
        run_train(run, *SMOKE[1:], "training.learning_rate=0.02")
    with pytest.raises(LsrAdaptError, match="holds checkpoints of an unfinished run"):
        run_train(run, *SMOKE[1:], "training.resume=false")
    with pytest.raises(LsrAdaptError, match="training.resume=.*no such directory"):
        run_train(tmp_path / "other", *SMOKE[1:], f"training.resume={tmp_path / 'nope'}")


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLoss, match=r"step 7 .*checkpoint-5.*nonfinite_loss=skip") as e:
        run_train(run, *SMOKE[1:], "training.callbacks=[{_target_:faults.NaNLossAtStep,step:7}]")
    assert "\n" not in str(e.value)
    assert not (run / "results.json").exists()
    assert [c.name for c in checkpoint_dirs(run)] == ["checkpoint-5"]
    assert checkpoint_problem(checkpoint_dirs(run)[0]) is None


def test_nan_loss_skip_policy_drops_the_batch_and_finishes(tmp_path):
    results = run_train(tmp_path, *SMOKE[1:], "training.nonfinite_loss=skip",
                        "training.callbacks=[{_target_:faults.NaNLossAtStep,step:7}]")
    assert results["skipped_nonfinite_steps"] == [7]
    assert all(torch.isfinite(t).all() for t in _weights(tmp_path).values())
    assert all(e["loss"] == e["loss"] for e in results["eval_history"])  # no NaN reached the weights


def test_bad_fault_settings_are_one_line_errors(tmp_path):
    with pytest.raises(LsrAdaptError, match="nonfinite_loss 'ignore'; valid choices: stop, skip"):
        run_train(tmp_path / "a", "training.nonfinite_loss=ignore")
    with pytest.raises(LsrAdaptError, match="checkpoint_every='often'; valid choices"):
        run_train(tmp_path / "b", "training.checkpoint_every=often")
    with pytest.raises(LsrAdaptError, match=r"training.callbacks\[0\]"):
        run_train(tmp_path / "c", "training.callbacks=[{_target_:no.such.Callback}]")


def test_merge_refuses_a_non_finite_delta():
    from helpers import tiny_classifier

    from lsr_adapt.adapters import adapter_layers
    from lsr_adapt.modeling import prepare_model

    loaded = tiny_classifier()
    prepare_model(loaded, "lsr", {}, ["query", "value"])
    layer = next(iter(adapter_layers(loaded.model).values()))
    before = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.lsr_B2.fill_(float("nan"))
    with pytest.raises(LsrAdaptError, match="non-finite"):
        layer.merge()
    assert not layer.merged and torch.equal(layer.base_layer.weight, before)


def test_resume_from_an_earlier_run_dir_into_a_new_one(tmp_path):
    """With timestamped run dirs, `training.resume=<the killed run's dir>` continues it in a new dir."""
    whole = run_train(tmp_path / "whole", *SMOKE[1:])
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError):
        run_train(crashed, *SMOKE[1:], "training.callbacks=[{_target_:faults.CrashAtStep,step:27}]")
    resumed = run_train(tmp_path / "next", *SMOKE[1:], f"training.resume={crashed}")
    assert resumed["resumed_from"] == str(crashed / "checkpoint-25")
    _same_run(resumed, whole, logged_loss=False)  # step 25 is between logging steps 24 and 32
    wa, wb = _weights(tmp_path / "next"), _weights(tmp_path / "whole")
    for k in wa:
        # resume replays the same float32 ops on state restored bit for bit (measured identical on CPU);
        # 1e-6 is one rounding of these O(1) weights, a lost or repeated step moves them by ~lr·|update|
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    with pytest.raises(LsrAdaptError, match="another config"):
        run_train(tmp_path / "other", *SMOKE[1:], "training.seed=1", f"training.resume={crashed / 'checkpoint-25'}")
