"""Hyperparameter search with Optuna (>= 4, public API only), as a Hydra sweeper.

``python main.py hparams_search=optuna`` selects ``hydra/sweeper: lsr_optuna``, the sweeper of
``hydra_plugins/lsr_adapt_optuna`` (shipped with this package, found by Hydra like any sweeper
plugin), which calls :func:`run_study`:

* **search space**: Hydra's sweep syntax (``choice(...)``, ``range(...)``, ``interval(...)``,
  ``tag(log, interval(...))``, and ``tag(int, interval(...))`` for integers), from ``hydra.sweeper.params`` (shared by every method: the learning
  rate), the selected method's own ``hparams_search.spaces.<adaptation_type>`` (``model.lora.r``
  does not exist when ``model=roberta_lsr``), and any sweep given on the command line; parsed into
  ``optuna.distributions`` (:func:`distributions_from_overrides`) and drawn with
  ``study.ask(fixed_distributions=...)``.
* **study**: ``optuna.create_study(..., load_if_exists=True)`` in RDB storage: by default the
  SQLite file ``<sweep dir>/optuna.db``, or any SQLAlchemy URL (``hydra.sweeper.storage``), so the
  same command run again continues the study, and several processes (machines) on one storage
  are workers of one study. ``optuna-dashboard sqlite:///<sweep dir>/optuna.db`` opens it.
* **direction**: from the task's metric (``lsr_adapt.metrics.higher_is_better``: loss and
  perplexity are minimised, everything else maximised).
* **trials**: each one an ordinary job of ``main.py`` composed from the same configs with the
  trial's values as overrides, in ``<sweep dir>/trial_<trial number>`` (numbers are the study's,
  so workers never share a dir); ``main()`` returns the best validation metric, the objective.
* **pruning**: the trial reaches the job through ``training.pruning`` (in-process launcher): each
  epoch's validation metric is reported and the pruner (``hydra.sweeper.pruner``, median by
  default) stops a bad trial early; its ``results.json`` says ``status: pruned``.
* **result**: ``<sweep dir>/optimization_results.yaml``: the best trial (number, value, params,
  dir) and every trial's state of this study.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from .errors import LsrAdaptError, first_line

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
DEFAULT_DB = "optuna.db"


# -- search space ----------------------------------------------------------------------------------
def _distribution(override):
    """The optuna distribution of one Hydra sweep override (``choice``, ``range``, ``interval``)."""
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():  # range(start, stop, step): stop excluded, as in Hydra's own sweeps
        values = list(override.sweep_iterator())
        if not values:
            raise LsrAdaptError(f"search space {override.input_line}: holds no values")
        step = value.step
        if all(isinstance(v, int) for v in (value.start, value.stop, step)):
            return IntDistribution(int(values[0]), int(values[-1]), step=int(step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(step))
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if "int" in value.tags:  # Hydra's interval is always float: tag(int, interval(1, 64)) draws integers
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise LsrAdaptError(f"search space {override.input_line}: not a sweep Optuna can draw from; "
                        f"valid: choice(...), range(...), interval(...), tag(log, interval(...)), "
                        f"tag(int, interval(...))")


def distributions_from_overrides(overrides: list[str]) -> tuple[dict, list[str]]:
    """(name -> optuna distribution for the sweeps, the plain overrides every trial keeps)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise LsrAdaptError(f"search space: {str(e).splitlines()[0]}") from None
    dists, fixed = {}, []
    for o in parsed:
        if o.is_sweep_override():
            dists[o.get_key_element()] = _distribution(o)
        else:
            fixed.append(o.input_line)
    return dists, fixed


def method_space(cfg) -> dict:
    """The Optuna distributions for ``cfg.model.adaptation_type``, parsed from Hydra sweep syntax."""
    from omegaconf import OmegaConf

    method = str(cfg.model.adaptation_type)
    spaces = OmegaConf.select(cfg, "hparams_search.spaces")
    if spaces is None or method not in spaces:
        known = sorted(spaces) if spaces is not None else []
        raise LsrAdaptError(
            f"no search space for adaptation_type {method!r} in hparams_search.spaces; defined for: "
            f"{', '.join(known) or 'none'} (add hparams_search.spaces.{method} to conf/hparams_search/optuna.yaml)"
        )
    dists, fixed = distributions_from_overrides([f"{k}={v}" for k, v in spaces[method].items()])
    if fixed:
        raise LsrAdaptError(
            f"hparams_search.spaces.{method} entries must be sweeps (choice(...), range(...), interval(...)); "
            f"fixed values {fixed} belong in the model config or on the command line"
        )
    return dists


def direction_of(cfg) -> str:
    """``maximize`` or ``minimize``: which way the task's metric (``data.metric``) is better."""
    from .metrics import higher_is_better

    return "maximize" if higher_is_better(str(cfg.data.metric)) else "minimize"


def _override_value(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)  # repr: a float keeps every digit it was drawn with


# -- the study ---------------------------------------------------------------------------------------
def default_storage(sweep_dir) -> str:
    return f"sqlite:///{(Path(sweep_dir) / DEFAULT_DB).resolve()}"


def run_study(*, config, launcher, arguments: list[str], params, sampler, pruner, storage, study_name,
              n_trials: int, n_jobs: int = 1) -> dict:
    """Ask, launch, tell ``n_trials`` trials of one study; write and return the optimisation results."""
    import optuna
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from .iofiles import write_text
    from .training import pruning

    if int(n_trials) < 1 or int(n_jobs) < 1:
        raise LsrAdaptError(f"hydra.sweeper.n_trials={n_trials}, n_jobs={n_jobs}: both must be >= 1")
    dists, fixed = distributions_from_overrides([f"{k}={v}" for k, v in (params or {}).items()] + list(arguments))
    fixed_keys = {f.split("=", 1)[0].lstrip("+~") for f in fixed}
    for key, dist in method_space(config).items():
        dists.setdefault(key, dist)  # a sweep on the command line wins over the method's own space
    # a value fixed on the command line wins over any space that holds its key
    dists = {k: d for k, d in dists.items() if k not in fixed_keys}
    direction = direction_of(config)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # Hydra's record of the sweep: a rerun of the same command continues it (hydra_callbacks)
    write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(config))
    storage_url = str(storage) if storage else default_storage(sweep_dir)
    name = str(study_name) if study_name else sweep_dir.name
    sampler = grid_sampler_config(sampler, dists)
    try:
        sampler_obj = instantiate(sampler) if sampler else None
        pruner_obj = instantiate(pruner) if pruner else optuna.pruners.NopPruner()
        study = _open_study(optuna, name, storage_url, sampler_obj, pruner_obj, direction)
    except Exception as e:  # noqa: BLE001 - a bad sampler / pruner / storage setting: one line naming it
        raise LsrAdaptError(f"cannot open the Optuna study {name!r} (storage {storage_url}, sampler "
                            f"{_plain(sampler)}, pruner {_plain(pruner)}): {first_line(e.__cause__ or e)}") from None
    if study.direction.name.lower() != direction:
        raise LsrAdaptError(f"study {name!r} in {storage_url} was created to {study.direction.name.lower()}, but "
                            f"data.metric={config.data.metric} is to {direction}; use another study_name")
    log.info("Optuna study %r (%s %s) in %s: %d trials so far; %s with %s", name, direction, config.data.metric,
             storage_url, len(study.trials), type(sampler_obj).__name__, type(pruner_obj).__name__)

    left = int(n_trials)
    if isinstance(sampler_obj, optuna.samplers.GridSampler):  # a grid ends: a rerun after it only reports
        left = min(left, grid_points_left(study, dists))
        log.info("grid: %d point(s) left to run", left)
    while left > 0:
        trials = [study.ask(fixed_distributions=dists) for _ in range(min(left, int(n_jobs)))]
        for batch in _contiguous(trials):  # job number = trial number: unique in the study, across workers
            handles = [pruning.register(t.number, t) for t in batch]
            overrides = [tuple(fixed) + tuple(f"{k}={_override_value(v)}" for k, v in t.params.items())
                         for t in batch]
            try:
                returns = launcher.launch(overrides, initial_job_idx=batch[0].number)
            finally:
                for t in batch:
                    pruning.release(t.number)
            for trial, handle, ret in zip(batch, handles, returns):
                _tell(study, trial, handle, ret)
        left -= len(trials)

    results = optimization_results(study, sweep_dir, direction, str(config.data.metric), storage_url)
    write_text(sweep_dir / RESULTS_FILE, OmegaConf.to_yaml(OmegaConf.create(results)))
    if "best_trial" in results:
        log.info("best trial %d: %s %.6g with %s (%s)", results["best_trial"], config.data.metric,
                 results["best_value"], results["best_params"], sweep_dir / RESULTS_FILE)
    return results


GRID_SAMPLER = "optuna.samplers.GridSampler"


def grid_sampler_config(sampler, dists: dict):
    """``GridSampler`` without a ``search_space``: the grid is the search space's ``choice(...)`` lists
    (the one place they are written), so the grid matches what each trial draws; any other sampler as given."""
    from optuna.distributions import CategoricalDistribution

    plain = _plain(sampler)
    if not isinstance(plain, dict) or plain.get("_target_") != GRID_SAMPLER or "search_space" in plain:
        return sampler
    not_choices = sorted(k for k, d in dists.items() if not isinstance(d, CategoricalDistribution))
    if not_choices:
        raise LsrAdaptError(f"the grid sampler needs choice(...) for every searched value; not a choice: "
                            f"{', '.join(not_choices)}")
    return {**plain, "search_space": {k: list(d.choices) for k, d in dists.items()}}


def _open_study(optuna, name, storage, sampler, pruner, direction):
    """``create_study(load_if_exists=True)``, again after a moment when another worker was creating
    the same storage's tables at the same time (SQLite: a UNIQUE constraint on alembic_version, or
    "database is locked"); the second attempt finds them made."""
    import random
    import time

    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(5):
        try:
            return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                       direction=direction, load_if_exists=True)
        except SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())  # noqa: S311 - spreads the workers' retries, no security role
    raise AssertionError("unreachable")


def _plain(node):
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node) if isinstance(node, DictConfig) else node


def _contiguous(trials: list) -> list[list]:
    """Trials split where their numbers jump (another worker took the numbers between)."""
    out: list[list] = []
    for t in trials:
        if out and t.number == out[-1][-1].number + 1:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def _tell(study, trial, handle, ret) -> None:
    import optuna

    state = optuna.trial.TrialState
    try:
        value = ret.return_value  # raises when the job raised (run_job returns None instead)
    except Exception as e:  # noqa: BLE001 - any failure of the job is a failed trial
        log.warning("trial %d failed: %s", trial.number, e)
        value = None
    try:
        if handle.pruned is not None:
            study.tell(trial, state=state.PRUNED)
        elif value is None:
            study.tell(trial, state=state.FAIL)
        else:
            study.tell(trial, float(value))
    except RuntimeError as e:
        # GridSampler calls study.stop() once every grid point has run, which Optuna allows only inside
        # study.optimize(); the trial is stored by then (tell's finally), and run_study counts the grid itself
        if "Study.stop" not in str(e):
            raise


def grid_points_left(study, dists: dict) -> int:
    """Grid points no finished trial of the study has run yet (a failed one counts as run, as for
    Optuna's GridSampler); the grid is every combination of the searched ``choice(...)`` values."""
    size = math.prod(len(d.choices) for d in dists.values())
    done = {tuple(sorted((k, str(v)) for k, v in t.params.items())) for t in study.trials
            if t.state.is_finished() and set(t.params) == set(dists)}
    return max(0, size - len(done))


def optimization_results(study, sweep_dir: Path, direction: str, metric: str, storage: str) -> dict:
    """What the study found: the best completed trial, and every trial's state and values."""
    import optuna

    trials = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
               "dir": str(sweep_dir / f"trial_{t.number}")} for t in study.trials]
    out = {"name": "optuna", "study_name": study.study_name, "storage": storage, "direction": direction,
           "metric": metric,
           "counts": {s.name.lower(): sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}}
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        best = study.best_trial
        out.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                   best_trial_dir=str(sweep_dir / f"trial_{best.number}"))
    else:
        log.warning("no trial of study %r completed (all pruned or failed): no best trial", study.study_name)
    out["trials"] = trials
    return out
