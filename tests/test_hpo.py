"""lsr_adapt.hpo through the real CLI and a real Optuna study (SQLite storage in the sweep dir): a
grid search over the search space's choice(...) lists runs each point once, and the same command
run again after the grid is done runs nothing and reports the study."""

from __future__ import annotations

import pytest
import yaml
from test_sweeps import TINY, job_results, main_py

GRID = ("experiment=smoke", "hparams_search=optuna", "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
        "hydra.sweeper.pruner=null", 'hparams_search.spaces.lora={model.lora.r:"choice(2,4)",model.lora.alpha:"choice(8)"}',
        "training.learning_rate=choice(0.001,0.01)", "hydra.sweeper.n_trials=6")


@pytest.mark.slow  # four tiny trials: a couple of minutes of the 2-core budget; CI's -m slow pass
def test_a_grid_search_runs_each_point_once_and_a_rerun_only_reports(tmp_path):
    pytest.importorskip("optuna")
    sweep = tmp_path / "grid"
    main_py(*GRID, f"hydra.sweep.dir={sweep}", *TINY)
    results = job_results(sweep)
    # n_trials=6 asks for more than the grid holds: the 2 × 1 × 2 grid runs once, nothing is repeated
    # (the command line's spaces.lora mapping merges into optuna.yaml's: α is given here as one choice)
    assert sorted((r["method_config"]["r"], r["learning_rate"]) for r in results.values()) == [
        (2, 0.001), (2, 0.01), (4, 0.001), (4, 0.01)]
    first = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert first["counts"]["complete"] == 4 and len(first["trials"]) == 4
    assert first["best_value"] == pytest.approx(max(r["best_metric"] for r in results.values()))

    again = main_py(*GRID, f"hydra.sweep.dir={sweep}", *TINY)  # the same command, the grid done
    assert "grid: 0 point(s) left to run" in again.stderr + again.stdout
    assert job_results(sweep).keys() == results.keys()
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["trials"] == first["trials"]
