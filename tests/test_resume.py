"""Pre-emption: a run killed after any of its checkpoints, then relaunched with the same command, is
the run that was never killed; a relaunch with another config is refused, whatever was done to the
run's config record."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT, SMALL_RUN, assert_one_line_error, cli

from lsr_adapt.training.checkpoints import checkpoint_dirs

# 48 training examples, batch 8: 6 optimizer steps an epoch, 18 in all. A checkpoint every 3 steps
# lands mid-epoch (3, 9, 15) and on every epoch's last step (6, 12, 18); logging on the same steps, so
# a resume never splits the Trainer's running-loss window (the logged train_loss then matches too).
RUN = ["experiment=smoke", "logger=none", *SMALL_RUN, "training.num_train_epochs=3",
       "training.checkpoint_every=3", "training.logging_steps=3", "training.keep_checkpoints=1",
       "training.callbacks=[{_target_:faults.KillAtStepEnv},{_target_:faults.KillAfterCheckpoint}]"]
ENV = {"PYTHONPATH": str(ROOT / "tests")}


def _results(run_dir: Path) -> dict:
    r = json.loads((run_dir / "results.json").read_text())
    for e in r["eval_history"]:
        e.pop("elapsed_s")  # wall clock
    return r


@pytest.mark.slow  # 8 launches of main.py (~1.5 min on 2 cores); CI's -m slow pass
def test_a_run_killed_after_each_checkpoint_in_turn_equals_the_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    done = cli(*RUN, f"hydra.run.dir={whole}", env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "killed"
    resumed_from = []
    for i, sig in enumerate(["KILL", "TERM", "KILL", "TERM", "KILL", "TERM"]):  # after checkpoints 3, 6, ..., 18
        killed = cli(*RUN, f"hydra.run.dir={run}", env={**ENV, "LSR_TEST_KILL_AFTER_SAVE": sig})
        assert killed.returncode == -getattr(__import__("signal"), f"SIG{sig}"), killed.stderr[-3000:]
        assert not (run / "results.json").exists()
        assert [c.name for c in checkpoint_dirs(run)] == [f"checkpoint-{3 * (i + 1)}"]
        resumed_from.append(checkpoint_dirs(run)[0])
    last = cli(*RUN, f"hydra.run.dir={run}", env=ENV)
    assert last.returncode == 0, last.stderr[-3000:]

    a, b = _results(run), _results(whole)
    assert a["resumed_from"] == str(resumed_from[-1]) and b["resumed_from"] is None
    assert [e["epoch"] for e in a["eval_history"]] == [1, 2, 3]
    assert a["eval_history"] == b["eval_history"]  # every epoch's evaluation, the logged loss included
    assert (a["best_epoch"], a["best_metric"]) == (b["best_epoch"], b["best_metric"])
    assert a["test_metrics"] == b["test_metrics"] and a["metric_before_training"] == b["metric_before_training"]
    # the same float32 ops replayed on state restored bit for bit: the same tensors, byte for byte (the
    # file itself may differ in the order of its metadata keys, which safetensors keeps in a hash map)
    from safetensors import safe_open

    files = [safe_open(str(d / "adapter_model.safetensors"), "pt") for d in (run, whole)]
    assert files[0].metadata() == files[1].metadata() and set(files[0].keys()) == set(files[1].keys())
    for k in sorted(files[0].keys()):
        ta, tb = files[0].get_tensor(k), files[1].get_tensor(k)
        assert ta.dtype == tb.dtype and ta.shape == tb.shape and ta.numpy().tobytes() == tb.numpy().tobytes(), k
    assert not checkpoint_dirs(run)


def _snapshot(d: Path) -> dict:
    """Every file below ``d`` with its bytes and mtime: what "nothing was written there" compares."""
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


def _killed_run(tmp_path: Path, *extra: str) -> tuple[list, Path]:
    """A run SIGKILLed after its checkpoint at step 3: (its command, its dir)."""
    run = tmp_path / "killed"
    command = [*RUN, *extra, f"hydra.run.dir={run}"]
    killed = cli(*command, env={**ENV, "LSR_TEST_KILL_AT_STEP": "4"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [c.name for c in checkpoint_dirs(run)] == ["checkpoint-3"]
    return command, run


@pytest.mark.slow  # one killed launch and three refused ones (~30 s)
def test_a_relaunch_with_another_config_is_refused_whatever_happened_to_the_config_record(tmp_path):
    command, run = _killed_run(tmp_path)
    before = _snapshot(run)
    other = [*command, "training.learning_rate=0.5"]
    # the record the run dir shows may be deleted or edited: each checkpoint keeps its own, checksummed
    for damage in ("none", "deleted", "edited"):
        if damage == "deleted":
            (run / "config_resolved.yaml").unlink()
        elif damage == "edited":
            (run / "config_resolved.yaml").write_text((tmp_path / "record").read_text().replace("0.01", "0.5"))
        else:
            (tmp_path / "record").write_text((run / "config_resolved.yaml").read_text())
        snap = _snapshot(run)
        refused = cli(*other, env=ENV)
        assert_one_line_error(refused, str(run), "training.learning_rate", run_dir=run)
        assert _snapshot(run) == snap, f"a refused relaunch ({damage} record) wrote into the interrupted run"
    assert {k for k in before if k.startswith(".hydra/")} <= set(snap)  # Hydra's record of the first command
    (run / "config_resolved.yaml").write_text((tmp_path / "record").read_text())
    resumed = cli(*command, env=ENV)  # the same command still continues it
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["resumed_from"] == str(run / "checkpoint-3")
    assert (run / ".hydra/overrides.yaml").read_bytes() == before[".hydra/overrides.yaml"][0]


def _tmpfs(path: Path, size: str, *options: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"needs a tmpfs mount (root): {mounted.stderr.strip()}")
    return path


@pytest.fixture
def small_disk(tmp_path):
    disk = _tmpfs(tmp_path / "disk", "8m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow  # four launches (~40 s)
@pytest.mark.parametrize("when", ["5", "end"])  # at the checkpoint of step 6, at the run's final save
def test_a_full_disk_is_one_line_naming_the_path_and_the_same_command_then_finishes(small_disk, when):
    run = small_disk / "run"
    command = [*RUN[:-1], "training.callbacks=[{_target_:faults.FillDisk}]", f"hydra.run.dir={run}"]
    full = cli(*command, env={**ENV, "LSR_TEST_FILL_DISK": when})
    line = assert_one_line_error(full, str(run), "No space left on device", run_dir=run)
    assert ("checkpoint" in line) == (when != "end"), line
    assert not list(run.glob(".tmp-*")) and not list(run.rglob(".*.tmp")), "a torn write was left behind"
    (run / "filler.bin").unlink()
    done = cli(*command, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [e["epoch"] for e in json.loads((run / "results.json").read_text())["eval_history"]] == [1, 2, 3]


@pytest.mark.slow  # one launch refused at once (~5 s)
def test_a_read_only_run_dir_is_one_line(tmp_path):
    ro = _tmpfs(tmp_path / "ro", "1m", "ro")
    try:
        refused = cli(*RUN, f"hydra.run.dir={ro}", env=ENV)
        assert_one_line_error(refused, str(ro), run_dir=ro)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
