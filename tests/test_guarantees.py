"""The README's guarantees, each through the real command line the way a user meets it:

* one run dir, one run: a second process into a live run dir stops at once; a rerun into a
  finished one changes none of its files;
* a diverged run never reports success and never saves an adapter;
* an adapter file whose bytes changed after saving is refused everywhere it is loaded;
* a saved run is rebuilt as the model class it was trained as (a causal LM exports as one);
* the dependency lower bounds are the ones the code relies on.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, SMALL_RUN, assert_one_line_error, cli, run_train

from lsr_adapt.errors import LsrAdaptError


def _files(run_dir: Path) -> dict[str, str]:
    """Every file of a run dir with the sha256 of its bytes (what "changes none of its files" compares)."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("guarantees") / "run"
    run_train(run, *SMALL_RUN)
    return run


# -- one run dir, one run ---------------------------------------------------------------------------
def test_a_rerun_into_a_finished_run_dir_changes_none_of_its_files(tmp_path):
    run = tmp_path / "run"
    first = cli("experiment=smoke", *SMALL_RUN, "training.num_train_epochs=0", "logger=none", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _files(run)
    assert ".hydra/overrides.yaml" in before and "main.log" in before
    again = cli("experiment=smoke", *SMALL_RUN, "logger=none", "training.seed=7", f"hydra.run.dir={run}")
    assert_one_line_error(again, str(run), "already holds a finished run")
    assert _files(run) == before  # not even Hydra's record of the command or the log


@pytest.mark.slow  # ~15 s of a real run to collide with; tests/test_refusals.py refuses a busy dir in-process
def test_a_second_process_into_a_live_run_dir_stops_at_once(tmp_path):
    run = tmp_path / "run"
    # ~15 s of training: the second process (refused in ~3 s once the lock is seen) starts well inside it
    long_run = ("experiment=smoke", "logger=none", "training.num_train_epochs=18", f"hydra.run.dir={run}")
    first = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *long_run], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "config_resolved.yaml").exists():  # written once the lock is held
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.2)
        hydra_files = {n: (run / ".hydra" / n).read_bytes() for n in ("config.yaml", "overrides.yaml", "hydra.yaml")}
        t0 = time.time()
        second = cli(*long_run[:-1], "training.seed=3", f"hydra.run.dir={run}")
        assert_one_line_error(second, str(run), "in use by another running process")
        assert time.time() - t0 < 60  # refused before any model loads, not after the first run ends
        assert first.poll() is None  # the first run goes on, untouched
        assert {n: (run / ".hydra" / n).read_bytes() for n in hydra_files} == hydra_files
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["seed"] == 42  # the first run's, whole


def test_stale_temp_files_of_a_killed_write_are_removed_when_a_run_starts(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".results.json.abc12345.tmp").write_text("{half")
    (run / ".checkpoint-5.xyz_9876.tmp").mkdir()
    (run / "notes.tmp").write_text("mine")  # not a temp file of ours: kept
    run_train(run, *SMALL_RUN)
    assert sorted(p.name for p in run.glob("*.tmp")) == ["notes.tmp"]


# -- a diverged run --------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["skip", pytest.param("stop", marks=pytest.mark.slow)])
def test_a_diverged_run_fails_and_saves_no_adapter(tmp_path, policy):
    run = tmp_path / "run"
    proc = cli("experiment=smoke", "logger=none", "training.learning_rate=1e6", f"training.nonfinite_loss={policy}",
               f"hydra.run.dir={run}")
    line = assert_one_line_error(proc)
    assert re.search(r"diverged|not finite", line), line
    for name in ("results.json", "adapter_model.safetensors", "adapter_config.json"):
        assert not (run / name).exists(), name


def test_skipping_a_few_batches_is_allowed_up_to_the_configured_share(tmp_path):
    # one NaN batch of 32 steps is ~3% < 5% (the default share): the run completes, naming the step it dropped
    results = run_train(tmp_path / "ok", "training.num_train_epochs=1", "training.nonfinite_loss=skip",
                        "training.callbacks=[{_target_:faults.NaNLossAtStep,step:3}]")
    assert results["status"] == "completed" and results["skipped_nonfinite_steps"] == [3]
    with pytest.raises(LsrAdaptError, match=r"1 of 32 training steps had a non-finite loss .* training.nonfinite_max_skipped=0.01"):
        run_train(tmp_path / "strict", "training.num_train_epochs=1", "training.nonfinite_loss=skip",
                  "training.nonfinite_max_skipped=0.01", "training.callbacks=[{_target_:faults.NaNLossAtStep,step:3}]")
    assert not (tmp_path / "strict" / "results.json").exists()


# -- adapter integrity ------------------------------------------------------------------------------
def _flip_bytes(weights: Path) -> None:
    """Change 16 bytes inside the tensor data (past the safetensors header): the file still parses."""
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    middle = header + (len(data) - header) // 2
    data[middle:middle + 16] = bytes(b ^ 0x5A for b in data[middle:middle + 16])
    weights.write_bytes(bytes(data))


@pytest.fixture
def flipped_run(finished_run, tmp_path) -> Path:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _flip_bytes(run / "adapter_model.safetensors")
    return run


@pytest.mark.slow  # a run to flip a byte of; tests/test_artifacts.py refuses an edited weights file in-process
def test_a_flipped_byte_adapter_is_refused_by_predict_unless_told(flipped_run):
    run = flipped_run
    predict = cli("--run", str(run), "--text", "bako mimi", "--text-pair", "bako lo", module="lsr_adapt.predict")
    assert_one_line_error(predict, "adapter_model.safetensors", "does not match the checksum")
    # a file edited on purpose: an explicit option
    ok = cli("--run", str(run), "--text", "bako mimi", "--text-pair", "bako lo", "--no-checksum-check",
             module="lsr_adapt.predict")
    assert ok.returncode == 0, ok.stderr[-3000:]


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_a_flipped_byte_adapter_is_refused_by_export_and_init_from(flipped_run, tmp_path):
    run = flipped_run
    for fmt in ("merged", "peft"):
        export = cli("--run", str(run), "--format", fmt, "--out", str(tmp_path / fmt), module="lsr_adapt.export")
        assert_one_line_error(export, "does not match the checksum")
        assert not (tmp_path / fmt).exists()
    with pytest.raises(LsrAdaptError, match="does not match the checksum"):
        run_train(tmp_path / "continued", *SMALL_RUN, f"init_from={run}")
    ok = cli("--run", str(run), "--format", "merged", "--out", str(tmp_path / "edited"), "--no-checksum-check",
             module="lsr_adapt.export")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert run_train(tmp_path / "continued2", *SMALL_RUN, f"init_from={run}", "init_from_checksum=false")["init_from"]


# -- saved runs come back as the model class they were trained as ---------------------------------
@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_a_causal_lm_run_exports_merged_as_a_causal_lm(tmp_path):
    from transformers import AutoModelForCausalLM

    from lsr_adapt.artifacts import load_run

    run = tmp_path / "lm"
    run_train(run, "backbone=gpt2", "adapter=lora", "data=wikitext2", "training.num_train_epochs=1",
              "data.synthetic_sizes.train=64", "data.synthetic_sizes.validation=16", "data.synthetic_sizes.test=16")
    out = tmp_path / "merged"
    proc = cli("--run", str(run), "--format", "merged", "--out", str(out), module="lsr_adapt.export")
    assert proc.returncode == 0, proc.stderr[-3000:]
    live = load_run(run)
    assert type(live.model).__name__ == "GPT2LMHeadModel"
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert type(merged).__name__ == "GPT2LMHeadModel"
    ids = live.tokenizer(["bako mimi lo", "mimi bako"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want, got = live.model(**ids).logits, merged(**ids).logits
    # fp32 both; merging reorders one sum per weight (W₀x + s·B(Ax) vs (W₀ + s·BA)x): rounding
    # of order eps·|logit| per layer, far below 1e-4 at these sizes
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    peft_out = tmp_path / "peft"
    assert cli("--run", str(run), "--format", "peft", "--out", str(peft_out), module="lsr_adapt.export").returncode == 0
    assert json.loads((peft_out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"


# -- dependency bounds ----------------------------------------------------------------------------
def test_dependency_lower_bounds_are_the_ones_the_code_needs():
    from lsr_adapt.training.compat import MIN_VERSIONS

    text = (ROOT / "pyproject.toml").read_text()
    bounds = dict(re.findall(r'^\s*"([a-z_-]+)>=([\d.]+)"', text, flags=re.M))
    for name, minimum in MIN_VERSIONS.items():
        assert bounds[name] == minimum, (name, bounds.get(name), minimum)


@pytest.mark.parametrize("key", ["hydra.run.dir", pytest.param("output_dir", marks=pytest.mark.slow)])
def test_a_run_dir_that_cannot_be_made_is_one_line(tmp_path, key):
    blocker = tmp_path / "a_file"  # a file where a directory should be: not creatable, even for root
    blocker.write_text("")
    extra = [] if key == "hydra.run.dir" else [f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = cli("experiment=smoke", "logger=none", f"{key}={blocker / 'run'}", *extra)
    assert_one_line_error(proc, str(blocker / "run"))


@pytest.mark.parametrize("args, words", [
    (["--text", "bako", "--device", "gpu"], ["--device 'gpu': not a device name"]),
    pytest.param(["--text", "bako", "--device", "cuda"], ["--device 'cuda': this machine has no cuda device"],
                 marks=[pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"), pytest.mark.slow]),
    pytest.param(["--eval-split", "test", "--data", "nosuch=1"], ["--data nosuch=1", "has no key 'nosuch'"],
                 marks=pytest.mark.slow),
])
def test_predict_bad_input_is_one_line(finished_run, args, words):
    assert_one_line_error(cli("--run", str(finished_run), *args, module="lsr_adapt.predict"), *words)
