"""A refused command writes nothing: no run dir, no ``.hydra/`` record, no log line, no sweep record
of its own over another sweep's."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SMALL_RUN, assert_one_line_error, cli


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_bad_value_is_refused_before_the_run_dir_exists(tmp_path):
    run = tmp_path / "deep" / "run"
    refused = cli("experiment=smoke", "logger=none", "model.lora.r=0", f"hydra.run.dir={run}")
    assert_one_line_error(refused, "model.lora.r=0")
    assert not (tmp_path / "deep").exists(), "a refused command left a directory behind"


@pytest.mark.slow  # one finished one-job sweep, then two relaunches (~25 s)
def test_another_sweep_into_a_used_sweep_dir_is_refused_and_the_first_record_kept(tmp_path):
    sweep = tmp_path / "sweep"
    first = ["--multirun", "experiment=smoke", "logger=none", *SMALL_RUN, "training.num_train_epochs=0",
             f"hydra.sweep.dir={sweep}", "training.seed=1"]
    done = cli(*first)
    assert done.returncode == 0, done.stderr[-3000:]
    before = _tree(sweep)
    assert "multirun.yaml" in before and "0/results.json" in before

    other = cli(*first[:-1], "training.seed=2,3")
    assert_one_line_error(other, str(sweep), "holds another sweep", "training.seed=2,3")
    assert _tree(sweep) == before, "a refused sweep wrote into the first sweep's dir"

    again = cli(*first)  # the same sweep again: it continues; its finished job is kept as it is
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert _tree(sweep)["multirun.yaml"] == before["multirun.yaml"]
    assert _tree(sweep)["0/results.json"] == before["0/results.json"]


def test_a_busy_run_dir_is_refused_while_another_claim_holds_it(tmp_path):
    """In-process twin of test_guarantees' two-process collision (-m slow): the run dir's lock, held,
    refuses a second claim at once with the one line; released, the dir can be claimed again."""
    from lsr_adapt.errors import LsrAdaptError
    from lsr_adapt.training.rundir import claim

    run = tmp_path / "run"
    with claim(run), pytest.raises(LsrAdaptError, match="is in use by another running process"), claim(run):
        pass
    with claim(run):
        pass
