"""Hydra sweeps through main.py: Optuna search, equal-budget runs, submitit / joblib / Slurm launchers.

Each sweep is a real ``python main.py -m ...`` on the smoke preset shrunk to one epoch on a few
dozen examples. Tests that need an optional plugin skip when it is not installed
(pip install -e '.[sweep]').
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, compose
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from lsr_adapt.report import build_report

TINY = ("training.num_train_epochs=1", "data.synthetic_sizes.train=32", "data.synthetic_sizes.validation=16",
        "data.synthetic_sizes.test=16", "training.report_to=none")


def main_py(*args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "main.py", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def job_results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))}


NAMES_R0 = re.compile(r"\blora\.r=0\b|\br\b.*\b0\b")  # an error line that names r and its value 0


def main_py_failing(*args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    """``python main.py ARGS`` that must end with a non-zero exit status and no traceback."""
    out = subprocess.run([sys.executable, "main.py", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=timeout, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0, out.stderr[-4000:]
    assert "Traceback" not in out.stderr, out.stderr[-4000:]
    return out


@pytest.mark.slow  # a three-job sweep through the CLI (~10 s of the 2-core default budget)
def test_sweep_goes_on_past_a_failed_job_and_exits_non_zero(tmp_path):
    """Issue 14 item 7: r=0 is a bad value; job 0 fails, job 1 (r=4) still runs, the report (the
    report callback, added here the way experiment=demo adds it) lists the failure, and the sweep
    exits 1 with one last line counting the failed jobs."""
    sweep = tmp_path / "bad"
    out = main_py_failing("--multirun", "experiment=smoke", "model.lora.r=0,4", f"hydra.sweep.dir={sweep}",
                          "+hydra.callbacks.report._target_=lsr_adapt.hydra_callbacks.ReportOnMultirunEnd", *TINY)
    assert out.returncode == 1
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert failed["status"] == "failed" and failed["error_type"] == "LsrAdaptError"
    assert "model.lora.r=0" in failed["overrides"] and failed["job_num"] == 0
    assert NAMES_R0.search(failed["error"]) and "\n" not in failed["error"], failed["error"]
    assert not (sweep / "0" / "results.json").exists() and not (sweep / "0" / "adapter_model.safetensors").exists()
    assert not list((sweep / "0").glob(".*.tmp"))  # written atomically
    (name, r), = job_results(sweep).items()  # the job after the bad one ran to the end
    assert name == "1" and r["status"] == "completed" and r["method_config"]["r"] == 4
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 jobs failed (0) in ") and failed["error"] in last, last
    # the report: written before the exit, the completed run in its table, the failed job with its error
    md = (sweep / "report.md").read_text()
    assert "1 completed run(s)" in md and "## Failed or unfinished jobs" in md
    row, = [line for line in md.splitlines() if line.startswith("| `0`")]
    assert "| failed |" in row and failed["error"] in row
    w = build_report([sweep], out=tmp_path / "again")
    (p,) = w["problems"]
    assert p.path.name == "0" and p.status == "failed" and p.reason == failed["error"]


def test_single_run_keeps_the_one_line_error_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "main.py", "experiment=smoke", "model.lora.r=0",
                          f"hydra.run.dir={tmp_path / 'run'}", *TINY], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert out.returncode == 2, out.stderr[-4000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and NAMES_R0.search(last), last
    assert "Traceback" not in out.stderr and not (tmp_path / "run" / "failed.json").exists()


def test_a_crashing_job_is_recorded_with_its_traceback_in_the_log_file(tmp_path):
    """Not only user errors: any exception of a multirun job becomes failed.json (type and first
    line), the traceback goes to the job's log file; a stale failed.json of an earlier attempt is
    removed when the job starts again and succeeds."""
    import logging

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from lsr_adapt.sweep_status import FAILED, SWEEP_ID_ENV, failed_jobs, run_job

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", return_hydra_config=True, overrides=["model.lora.r=7"])
    job = tmp_path / "sweep" / "3"
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job)
        cfg.hydra.job.num = 3
    single = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    log_file = tmp_path / "main.log"
    handler = logging.FileHandler(log_file)
    root = logging.getLogger()
    root.addHandler(handler)
    old_id = os.environ.get(SWEEP_ID_ENV)
    os.environ[SWEEP_ID_ENV] = "sweep-a"
    try:
        HydraConfig.instance().set_config(cfg)

        def crash(c):
            raise KeyError("no such column: text")

        assert run_job(crash, cfg) is None  # the launcher goes on
        failed = json.loads((job / FAILED).read_text())
        assert failed["error"] == "KeyError: 'no such column: text'" and failed["error_type"] == "KeyError"
        assert failed["overrides"] == ["model.lora.r=7"] and failed["job_num"] == 3
        handler.flush()
        logged = log_file.read_text()
        assert "job failed: KeyError: 'no such column: text'" in logged
        assert "Traceback (most recent call last)" in logged and 'raise KeyError("no such column: text")' in logged
        (f,) = failed_jobs(tmp_path / "sweep", "sweep-a")
        assert f.path == job and f.overrides == ["model.lora.r=7"]
        assert failed_jobs(tmp_path / "sweep", "another sweep") == []  # a later sweep does not count it
        assert run_job(lambda c: {"best_metric": 0.5}, cfg) == {"best_metric": 0.5}
        assert not (job / FAILED).exists()  # the retry succeeded: no stale failure left behind
        # a job refused its dir (a finished run there, or another live process holding it) never
        # writes into it: the failure is kept for the end-of-sweep count instead
        from lsr_adapt import sweep_status

        (job / "results.json").write_text("{}")
        assert run_job(crash, cfg) is None
        assert sorted(p.name for p in job.iterdir()) == ["results.json"]
        busy = tmp_path / "sweep" / "busy"
        with open_dict(cfg):
            cfg.output_dir = str(busy)
        assert run_job(crash, cfg, refusal=lambda d: f"{d} is in use") is None and not busy.exists()
        assert [(j.path, j.error, j.sweep_id) for j in sweep_status.unrecorded[-2:]] == [
            (job, "KeyError: 'no such column: text'", "sweep-a"), (busy, "KeyError: 'no such column: text'", "sweep-a")]
        del sweep_status.unrecorded[-2:]

        def interrupted(c):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):  # Ctrl-C still stops a sweep
            run_job(interrupted, cfg)
        HydraConfig.instance().set_config(single)
        with pytest.raises(KeyError):  # a single run: unchanged, the entry point reports it
            run_job(crash, single)
    finally:
        root.removeHandler(handler)
        handler.close()
        HydraConfig.instance().cfg = None
        if old_id is None:
            os.environ.pop(SWEEP_ID_ENV, None)
        else:
            os.environ[SWEEP_ID_ENV] = old_id


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_optuna_search_goes_on_past_a_failed_trial(tmp_path):
    """A failed trial is a FAIL trial for Optuna (main() returns None), the search goes on, the best
    trial is a completed one, and the sweep exits non-zero. With sampler seed 0 (optuna 5.0), TPE's
    first two draws from choice(0, 2, 4) hold r=0 (fails: r must be >= 1) and another r (asserted)."""
    pytest.importorskip("optuna")
    sweep = tmp_path / "optuna_bad"
    out = main_py_failing("experiment=smoke", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                          'hparams_search.spaces.lora={model.lora.r:"choice(0,2,4)"}', f"hydra.sweep.dir={sweep}",
                          *TINY)
    assert out.returncode == 1
    trials = {d.name: yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) for d in sweep.glob("trial_*")}
    assert len(trials) == 2
    bad = {n for n, o in trials.items() if "model.lora.r=0" in o}
    assert bad and len(bad) < 2  # both kinds of trial ran
    for n in trials:  # a failed trial has failed.json and no results.json; a completed one the reverse
        assert (sweep / n / "failed.json").exists() == (n in bad)
        assert (sweep / n / "results.json").exists() == (n not in bad)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["model.lora.r"] != 0
    assert out.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 jobs failed")


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_optuna_search_two_trials(tmp_path):
    pytest.importorskip("optuna")
    sweep = tmp_path / "optuna"
    main_py("experiment=smoke", "model=roberta_lsr", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={sweep}", *TINY)
    results = job_results(sweep)
    assert len(results) == 2  # one directory per trial
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # the sweeper maximised what main() returned: each trial's best validation metric
    assert best["best_value"] == pytest.approx(max(r["best_metric"] for r in results.values()))
    assert set(best["best_params"]) == {"training.learning_rate", "model.lsr.r", "model.lsr.num_terms",
                                        "model.lsr.alpha"}
    for r in results.values():  # every trial ran with values drawn from conf/hparams_search/optuna.yaml
        mc = r["method_config"]
        assert mc["r"] in (1, 2, 4) and mc["num_terms"] in (4, 8, 16, 32) and 4.0 <= mc["alpha"] <= 256.0
        assert 1e-4 <= r["learning_rate"] <= 3e-2
    winner = max(results.values(), key=lambda r: r["best_metric"])
    assert winner["method_config"]["num_terms"] == best["best_params"]["model.lsr.num_terms"]
    w = build_report([sweep])  # the report reads the trials like any sweep
    assert w["runs"] == 2 and not w["problems"]


def test_search_space_follows_the_method():
    pytest.importorskip("optuna")
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from lsr_adapt.errors import LsrAdaptError
    from lsr_adapt.hpo import method_space

    lora = method_space(compose("hparams_search=optuna"))
    assert lora == {"model.lora.r": CategoricalDistribution([2, 4, 8, 16]),
                    "model.lora.alpha": CategoricalDistribution([4, 8, 16, 32])}
    lsr = method_space(compose("hparams_search=optuna", "model=roberta_lsr"))
    assert lsr["model.lsr.alpha"] == FloatDistribution(4.0, 256.0, log=True)
    assert set(lsr) == {"model.lsr.r", "model.lsr.num_terms", "model.lsr.alpha"}
    with pytest.raises(LsrAdaptError, match="no search space for adaptation_type 'lsr'"):
        method_space(compose("hparams_search=optuna", "model=roberta_lsr", "~hparams_search.spaces.lsr"))
    with pytest.raises(LsrAdaptError, match="must be sweeps"):
        method_space(compose("hparams_search=optuna", "hparams_search.spaces.lora={model.lora.r: 4}"))


def test_hydra_sweep_syntax_becomes_optuna_distributions():
    """Hydra's own semantics: range's stop is excluded, interval's ends are included."""
    optuna = pytest.importorskip("optuna")
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from lsr_adapt.errors import LsrAdaptError
    from lsr_adapt.hpo import distributions_from_overrides

    assert int(optuna.__version__.split(".")[0]) >= 4
    dists, fixed = distributions_from_overrides([
        "a=choice(adamw_torch,adafactor)", "b=range(1,9,2)", "c=tag(int,interval(1,4))", "d=tag(log,interval(1e-4,1e-2))",
        "e=range(0.0,1.0,0.25)", "g=interval(1,4)", "experiment=smoke"])
    assert dists == {"a": CategoricalDistribution(["adamw_torch", "adafactor"]), "b": IntDistribution(1, 7, step=2),
                     "c": IntDistribution(1, 4), "d": FloatDistribution(1e-4, 1e-2, log=True),
                     "e": FloatDistribution(0.0, 0.75, step=0.25), "g": FloatDistribution(1.0, 4.0)}
    assert fixed == ["experiment=smoke"]
    with pytest.raises(LsrAdaptError, match="holds no values"):
        distributions_from_overrides(["b=range(4,1)"])
    with pytest.raises(LsrAdaptError, match="search space"):
        distributions_from_overrides(["b=choice(1,"])


def test_the_direction_follows_the_task_metric():
    from lsr_adapt.hpo import direction_of

    assert direction_of(compose("hparams_search=optuna")) == "maximize"  # MRPC accuracy
    assert direction_of(compose("hparams_search=optuna", "backbone=gpt2", "adapter=lora", "data=wikitext2")) == "minimize"
    assert direction_of(compose("hparams_search=optuna", "data.metric=loss")) == "minimize"


def test_the_optuna_sweeper_is_our_hydra_plugin():
    """Found by Hydra in the hydra_plugins namespace package; median pruning and SQLite storage by default."""
    pytest.importorskip("optuna")
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    assert "LsrOptunaSweeper" in [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["hparams_search=optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.lsr_adapt_optuna.sweeper.LsrOptunaSweeper"
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner" and sweeper.storage is None
    assert cfg.hydra.sweep.dir == "multirun/optuna/mrpc-lora"  # one dir per study: a rerun continues it


OPTUNA_TINY = (*TINY[1:], "training.num_train_epochs=2")


@pytest.mark.slow  # two sweeps of 2 trials in parallel, then a third (about 2 minutes on 2 cores)
def test_two_optuna_workers_share_one_study_and_a_rerun_continues_it(tmp_path):
    """Two processes with the same command are two workers of the study in <sweep dir>/optuna.db
    (SQLite): 4 trials, numbered by the study, each an ordinary run dir; the same command again adds
    trials to the same study. Checked against the study as optuna itself loads it."""
    optuna = pytest.importorskip("optuna")
    sweep = tmp_path / "study"
    cmd = [sys.executable, "main.py", "experiment=smoke", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
           f"hydra.sweep.dir={sweep}", *OPTUNA_TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # one sampler seed per worker (a hydra.* override: still the same sweep), else both draw the same
    # start-up trials
    workers = [subprocess.Popen([*cmd, f"hydra.sweeper.sampler.seed={seed}"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-4000:]
    study = optuna.load_study(study_name="mrpc-lora", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    state = optuna.trial.TrialState
    # the default median pruner may stop trials 2 and 3 (it starts after 2 complete trials)
    assert all(t.state in (state.COMPLETE, state.PRUNED) for t in study.trials)
    results = job_results(sweep)
    assert sorted(results) == [f"trial_{n}" for n in range(4)]  # one ordinary run dir per trial
    for t in study.trials:  # each trial's value is its run's best validation metric, its params its config
        r = results[f"trial_{t.number}"]
        assert r["status"] == ("pruned" if t.state == state.PRUNED else "completed")
        assert r["learning_rate"] == t.params["training.learning_rate"]
        assert r["method_config"]["r"] == t.params["model.lora.r"]
        if t.state == state.COMPLETE:
            assert t.value == r["best_metric"]

    main_py(*cmd[2:4], "hydra.sweeper.n_trials=1", *cmd[5:])  # the same command again: the study goes on
    study = optuna.load_study(study_name="mrpc-lora", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert len(study.trials) == 5 and (sweep / "trial_4" / "results.json").exists()
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == study.best_value and best["best_params"] == study.best_params
    assert best["best_trial_dir"] == str(sweep / f"trial_{study.best_trial.number}")
    assert best["counts"]["complete"] + best["counts"]["pruned"] == 5


@pytest.mark.slow  # one trial of 3 epochs stopped after the first (about 40 s on 2 cores)
def test_a_pruned_trial_stops_early_says_so_and_the_report_lists_it(tmp_path):
    """ThresholdPruner(lower=1.1) prunes any accuracy at its first report: the trial's training stops
    after epoch 1 of 3, its results.json says status pruned, the study records PRUNED, the report
    lists it with its reason, and the sweep is no failure."""
    optuna = pytest.importorskip("optuna")
    sweep = tmp_path / "pruned"
    main_py("experiment=smoke", "hparams_search=optuna", "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep}",
            "hydra.sweeper.pruner=null", "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.1}",
            *TINY[1:], "training.num_train_epochs=3")
    res = json.loads((sweep / "trial_0" / "results.json").read_text())
    assert res["status"] == "pruned" and res["pruned"]["epoch"] == 1 and res["pruned"]["trial"] == 0
    assert [h["epoch"] for h in res["eval_history"]] == [1]  # epochs 2 and 3 never ran
    study = optuna.load_study(study_name="mrpc-lora", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED]
    assert study.trials[0].intermediate_values == {1: res["pruned"]["value"]}
    assert not (sweep / "trial_0" / "failed.json").exists()
    w = build_report([sweep], out=tmp_path / "report")
    assert w["runs"] == 0 and [(p.status, p.path.name) for p in w["problems"]] == [("pruned", "trial_0")]
    assert "stopped by the pruner after epoch 1" in w["md"].read_text()


@pytest.mark.slow  # two GPT-2 smoke trials (about a minute on 2 cores)
def test_a_perplexity_study_minimises(tmp_path):
    optuna = pytest.importorskip("optuna")
    sweep = tmp_path / "ppl"
    main_py("experiment=smoke", "backbone=gpt2", "adapter=lora", "data=wikitext2", "hparams_search=optuna",
            "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}", *OPTUNA_TINY)
    study = optuna.load_study(study_name="wikitext2-lora", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    results = job_results(sweep)
    assert study.best_value == min(r["best_metric"] for r in results.values())  # the lowest perplexity


def test_equal_budget_experiment_is_a_two_method_seed_sweep():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", return_hydra_config=True,
                            overrides=["experiment=[smoke,equal_budget]", "budget.params=1500"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {"adapter": "lora,lsr", "training.seed": "0,1,2"}
    assert cfg.budget.params == 1500 and cfg.model.tiny  # composes with the smoke preset


@pytest.mark.slow
def test_equal_budget_sweep_runs_both_methods_at_the_budget(tmp_path):
    sweep = tmp_path / "eb"
    budget = 1500
    main_py("experiment=[smoke,equal_budget]", f"budget.params={budget}", "training.seed=0",
            f"hydra.sweep.dir={sweep}", *TINY[:-1])  # default logger: TensorBoard files per job
    results = job_results(sweep)
    by = {r["adaptation_type"]: (name, r) for name, r in results.items()}
    assert set(by) == {"lora", "lsr"}
    # tiny RoBERTa: 4 layers of 32 × 32; LoRA r·64 per layer, LSR t·r·(8+4+8+4) with r = 2 kept
    lora, lsr = by["lora"][1], by["lsr"][1]
    assert lora["method_config"]["r"] == 6 and lora["adapter_params"] == 4 * 6 * 64  # 1,536
    assert lsr["method_config"] == {**lsr["method_config"], "r": 2, "num_terms": 8}
    assert lsr["adapter_params"] == 4 * 8 * 2 * 24  # 1,536
    for name, _ in by.values():  # each job keeps its own outputs, tracker files included
        assert list((sweep / name / "runs").rglob("events.out.tfevents*"))
    w = build_report([sweep])
    assert w["configs"] == 2


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_submitit_local_launch(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "local"
    out = main_py("-m", "experiment=smoke", "hydra/launcher=local", "training.seed=3", f"hydra.sweep.dir={sweep}",
                  *TINY)
    assert "Submitit 'local' sweep output dir" in out.stdout + out.stderr
    (name, r), = job_results(sweep).items()
    assert name == "0" and r["seed"] == 3 and r["status"] == "completed"
    assert list((sweep / ".submitit").rglob("*_log.out"))  # submitit's own logs, apart from the job dir


@pytest.mark.slow
def test_joblib_parallel_launch(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "joblib"
    main_py("-m", "experiment=smoke", "hydra/launcher=parallel", "model=roberta_lora,roberta_lsr",
            f"hydra.sweep.dir={sweep}", *TINY)
    assert sorted(r["adaptation_type"] for r in job_results(sweep).values()) == ["lora", "lsr"]


def test_slurm_launcher_config_makes_a_valid_job_array(tmp_path, monkeypatch):
    """The slurm launcher config, mapped to submitit parameters the way the plugin maps them,
    gives the sbatch script documented in docs/comparing.md (no cluster needed: a stub srun)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import _make_sbatch_string

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=my_proj",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert params["_target_"].endswith("SlurmLauncher")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    init = {"submitit_folder", "max_num_timeout", "_target_"}
    executor = submitit.AutoExecutor(folder=str(tmp_path / "sweep" / ".submitit" / "%j"), cluster="slurm",
                                     slurm_max_num_timeout=params["max_num_timeout"])
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in init})
    script = _make_sbatch_string(command="python -u -m submitit.core._submit x", folder=str(tmp_path),
                                 map_count=12, **executor._executor.parameters)
    for line in ("#SBATCH --array=0-11%8", "#SBATCH --partition=gpu", "#SBATCH --account=my_proj",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB",
                 "#SBATCH --time=180", "#SBATCH --job-name=lsr-adapt"):
        assert line in script.splitlines(), (line, script)


FAKE_SBATCH = '''#!{python}
"""sbatch stand-in: records the job array and runs its tasks one after another in the background."""
import os, re, subprocess, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_STATE"]); state.mkdir(exist_ok=True)
script = Path(sys.argv[-1])
jid = str(1000 + len(list(state.glob("array_*"))))
(state / f"array_{{jid}}").write_text(script.read_text())
m = re.search(r"#SBATCH --array=0-(\\d+)", script.read_text())
subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_runner")), jid, str(int(m.group(1)) + 1 if m else 1),
                  str(script)], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {{jid}}")
'''

FAKE_RUNNER = '''#!{python}
"""Runs array task i of an sbatch script with the SLURM_* environment a cluster node would set."""
import os, re, subprocess, sys, time
from pathlib import Path
jid, n, script = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
state = Path(os.environ["FAKE_SLURM_STATE"])
text = script.read_text()
out_pattern = re.search(r"#SBATCH --output=(\\S+)", text).group(1)
for i in range(n):
    task = f"{{jid}}_{{i}}"
    out = Path(out_pattern.replace("%A", jid).replace("%a", str(i)))
    deadline = time.time() + 120  # submitit moves the task's pickle in place after sbatch returns
    while not (out.parent / f"{{task}}_submitted.pkl").exists() and time.time() < deadline:
        time.sleep(0.2)
    (state / task).write_text("RUNNING")
    env = {{**os.environ, "SLURM_JOB_ID": str(int(jid) * 100 + i), "SLURM_ARRAY_JOB_ID": jid,
           "SLURM_ARRAY_TASK_ID": str(i), "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost"}}
    with open(out, "a") as log, open(str(out).replace(".out", ".err"), "a") as err:
        rc = subprocess.call(["bash", str(script)], env=env, stdout=log, stderr=err)
    (state / task).write_text("COMPLETED" if rc == 0 else "FAILED")
'''

FAKE_SACCT = '''#!{python}
import os, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_STATE"])
ids = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
print("JobID|State|NodeList")
for f in sorted(state.iterdir()):
    if any(f.name.startswith(j + "_") for j in ids):
        print(f"{{f.name}}|{{f.read_text()}}|localhost")
'''

FAKE_SRUN = """#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in --unbuffered) shift;; --output|--error) shift 2;; *) break;; esac; done
exec "$@"
"""


@pytest.mark.slow
def test_slurm_launcher_end_to_end_on_a_stub_cluster(tmp_path):
    """hydra/launcher=slurm through submitit against stand-ins for sbatch / srun / sacct that run the
    array tasks on this machine: the jobs land in their own directories as on a cluster."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("fake_runner", FAKE_RUNNER), ("sacct", FAKE_SACCT),
                       ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text.format(python=sys.executable) if text is not FAKE_SRUN else text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    sweep = tmp_path / "slurm"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SLURM_STATE": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, "main.py", "-m", "experiment=smoke", "hydra/launcher=slurm",
                          "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=null",
                          "model=roberta_lora,roberta_lsr", f"hydra.sweep.dir={sweep}", *TINY],
                         capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    script = (tmp_path / "state" / "array_1000").read_text()
    # 2 tasks: submitit caps array_parallelism (8) at the array's size
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --partition=gpu" in script
    results = job_results(sweep)
    assert sorted(r["adaptation_type"] for r in results.values()) == ["lora", "lsr"]
    assert all((sweep / name / ".hydra").is_dir() for name in results)


FAKE_PREEMPTING_RUNNER = '''#!{python}
"""Like fake_runner, but pre-empts each array task once: when the task's first checkpoint is on disk
it sends SIGUSR2 (Slurm's warning signal, sbatch --signal) to the task's process; submitit then
checkpoints the job and calls `scontrol requeue`, and the task runs again, as Slurm would rerun it."""
import os, re, signal, subprocess, sys, time
from pathlib import Path
import psutil
jid, n, script = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
state, sweep = Path(os.environ["FAKE_SLURM_STATE"]), Path(os.environ["FAKE_SWEEP_DIR"])
text = script.read_text()
out_pattern = re.search(r"#SBATCH --output=(\\S+)", text).group(1)
for i in range(n):
    task = f"{{jid}}_{{i}}"
    out = Path(out_pattern.replace("%A", jid).replace("%a", str(i)))
    deadline = time.time() + 120
    while not (out.parent / f"{{task}}_submitted.pkl").exists() and time.time() < deadline:
        time.sleep(0.2)
    env = {{**os.environ, "SLURM_JOB_ID": str(int(jid) * 100 + i), "SLURM_ARRAY_JOB_ID": jid,
           "SLURM_ARRAY_TASK_ID": str(i), "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost"}}
    for attempt in range(2):
        (state / task).write_text("RUNNING")
        with open(out, "a") as log, open(str(out).replace(".out", ".err"), "a") as err:
            proc = subprocess.Popen(["bash", str(script)], env=env, stdout=log, stderr=err)
            while attempt == 0 and proc.poll() is None:
                if list((sweep / str(i)).glob("checkpoint-*/manifest.json")):
                    for child in psutil.Process(proc.pid).children(recursive=True):
                        child.send_signal(signal.SIGUSR2)
                    (state / f"preempted_{{task}}").write_text("")
                    break
                time.sleep(0.05)
            rc = proc.wait()
        if not (state / f"requeue_{{task}}").exists() or attempt == 1:
            break
    (state / task).write_text("COMPLETED" if rc == 0 else "FAILED")
'''

FAKE_SCONTROL = '''#!{python}
import os, sys
from pathlib import Path
assert sys.argv[1] == "requeue", sys.argv
(Path(os.environ["FAKE_SLURM_STATE"]) / f"requeue_{{sys.argv[2]}}").write_text("")
'''


@pytest.mark.slow
def test_slurm_preempted_task_requeues_and_resumes_from_its_checkpoint(tmp_path):
    """hydra/launcher=slurm on the stub cluster, each array task pre-empted once after its first
    checkpoint: submitit requeues it, and the rerun continues from that checkpoint to the end."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("fake_runner", FAKE_PREEMPTING_RUNNER), ("sacct", FAKE_SACCT),
                       ("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text.format(python=sys.executable) if text is not FAKE_SRUN else text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    sweep, state = tmp_path / "slurm", tmp_path / "state"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SLURM_STATE": str(state), "FAKE_SWEEP_DIR": str(sweep)}
    out = subprocess.run([sys.executable, "main.py", "-m", "experiment=smoke", "hydra/launcher=slurm",
                          "hydra.launcher.gpus_per_node=null", "model=roberta_lora,roberta_lsr",
                          f"hydra.sweep.dir={sweep}", "training.report_to=none", "training.num_train_epochs=20"],
                         capture_output=True, text=True, cwd=ROOT, timeout=1500, env=env)  # 45 s on an idle machine
    assert out.returncode == 0, out.stderr[-4000:]
    assert sorted(p.name for p in state.glob("requeue_*")) == ["requeue_1000_0", "requeue_1000_1"]
    results = job_results(sweep)
    assert sorted(results) == ["0", "1"]
    for r in results.values():
        assert r["resumed_from"] is not None and "checkpoint-" in r["resumed_from"]
        assert [e["epoch"] for e in r["eval_history"]] == list(range(1, 21))  # nothing lost, nothing twice
