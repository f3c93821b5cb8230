"""Experiment trackers (the ``logger`` config group): TensorBoard, Weights & Biases, MLflow, or none.

The Trainer's own integrations do the logging (``report_to`` + their environment variables);
this module only picks the tracker, checks it can be reached, and owns the tracker *run*:

* it is opened before the first evaluation and closed after ``results.json`` is written, so the
  metric before training, every epoch and the final summary (best metric, test metrics, sizes,
  time, memory) land in one run, and every job of an in-process sweep gets its own run (the
  Trainer's wandb callback would otherwise reuse the first job's run for all of them);
* a remote tracker that cannot be reached is a one-line :class:`LsrAdaptError` within
  ``REACH_TIMEOUT_S`` seconds, before any training, instead of the clients' long retry loops;
* no tracker is ever required: ``logger=none`` (or ``training.report_to=none``) logs nothing, and
  a missing optional package is a clear error naming the extra to install.

Defaults: TensorBoard event files under ``<run dir>/runs/``; wandb offline under
``<run dir>/wandb/``; MLflow in a SQLite store shared by the jobs of a sweep,
``<sweep dir>/mlflow.db`` (``<run dir>/mlflow.db`` for a single run), artifacts beside it, unless
``logger.tracking_uri`` or ``$MLFLOW_TRACKING_URI`` names another store or a server.

It reads two things of the config: the ``logger`` section and ``training.report_to``; a tracker run
also logs the run's config record (the resolved config, ``start_tracking``'s ``record``) as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .errors import LsrAdaptError, choices_error
from .outpaths import RESULTS

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb", "mlflow", "none")
WANDB_MODES = ("offline", "online", "disabled")
REACH_TIMEOUT_S = 5.0
_MLFLOW_PARAM_MAX = 250  # the shortest value limit across MLflow versions and servers


@dataclass
class Tracking:
    """An open tracker run: pass ``report_to`` to ``TrainingArguments``, call ``finish`` at the end."""

    name: str
    report_to: list[str]
    _close: Callable[[dict | None], None] | None = None

    def finish(self, results: dict | None = None) -> None:
        """Log the final summary (``results.json``'s numbers) and close the run; never raises."""
        close, self._close = self._close, None
        if close is None:
            return
        try:
            close(results)
        except Exception as e:  # the run's results are already on disk; a tracker hiccup must not fail it
            log.warning("closing the %s run failed: %s", self.name, e)


def tracker_names(logger: DictConfig | None, report_to) -> list[str]:
    """The trackers a run reports to: ``report_to`` (``training.report_to``: a name or a list; null: the
    ``logger`` section's ``logger.name``; ``none`` or ``[]``: nothing). wandb and mlflow take their settings from
    the logger group, so either one must be the group's; any other integration transformers supports
    (comet_ml, clearml, neptune, dvclive, trackio, ...) is passed to the Trainer as it is, configured
    by its own environment variables."""
    configured = str(logger.name) if logger is not None else "none"
    if configured not in TRACKERS:
        raise choices_error("tracker (logger / training.report_to)", configured, TRACKERS)
    value = report_to
    if value is None:
        value = configured
    names = [str(v) for v in value] if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [str(value)]
    if "none" in names or not names:
        if len(names) > 1:
            raise LsrAdaptError(f"training.report_to={names}: none goes alone (none: no tracker)")
        return []
    for name in names:
        if name in ("wandb", "mlflow") and name != configured:
            # wandb and mlflow need their settings, which live in the logger group
            raise LsrAdaptError(f"training.report_to={name} is replaced by the logger group: use logger={name} "
                                f"(settings in conf/logger/{name}.yaml)")
        if name not in TRACKERS:
            _check_integration(name)
    return list(dict.fromkeys(names))


def _check_integration(name: str) -> None:
    """A tracker lsr-adapt does not manage: one of transformers' reporting integrations, installed."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    if name not in INTEGRATION_TO_CALLBACK:
        raise choices_error("tracker (training.report_to)", name, set(INTEGRATION_TO_CALLBACK) | {"none"})
    if name not in get_available_reporting_integrations():
        raise LsrAdaptError(f"training.report_to={name}: its package is not installed (transformers' {name} "
                            f"integration needs it); install it, or remove {name} from training.report_to")


def tracker_name(logger: DictConfig | None, report_to) -> str:
    """The tracker whose run lsr-adapt opens and closes: the logger group's, if the run reports to it
    (else the first tracker named, or ``none``)."""
    names = tracker_names(logger, report_to)
    configured = str(logger.name) if logger is not None else "none"
    return configured if configured in names else (names[0] if names else "none")


def start_tracking(logger: DictConfig | None, report_to, out_dir: Path, record: Mapping) -> Tracking:
    """Open the run of the trackers configured for the job writing into ``out_dir``: the Trainer
    reports to every tracker named; the wandb or mlflow run (the logger group's) is opened here.
    ``record``: the job's resolved config (``OmegaConf.to_container(cfg, resolve=True)``), logged with
    the run as it is."""
    names = tracker_names(logger, report_to)
    name = tracker_name(logger, report_to)
    options = logger if logger is not None and logger.name == name else {}
    if name == "wandb":
        return Tracking(name, names, _start_wandb(record, options, Path(out_dir)))
    if name == "mlflow":
        return Tracking(name, names, _start_mlflow(record, options, Path(out_dir)))
    return Tracking(name, names)


# -- shared ------------------------------------------------------------------------------------
def _sweep_dir() -> Path | None:
    """The multirun's sweep directory when this job is part of one (jobs share trackers' stores)."""
    with contextlib.suppress(ImportError, ValueError):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            if hc.mode == RunMode.MULTIRUN:
                return Path(hc.sweep.dir)
    return None


def _config_dict(record: Mapping) -> dict:
    """The job's resolved config without the ``hydra`` node."""
    return {k: v for k, v in record.items() if k != "hydra"}


def _flat_config(record: Mapping) -> dict:
    """The job's config as ``{"cfg.model.lsr.r": 2, ...}``: prefixed, because the Trainer logs its own
    arguments into the same run and a root key such as ``output_dir`` must not collide with them."""
    container = {"cfg": _config_dict(record)}
    flat: dict = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = node

    walk("", container)
    return flat


def summary_metrics(results: dict) -> dict[str, float]:
    """The numbers of ``results.json`` worth a line in a tracker's run table."""
    keys = ("best_metric", "best_epoch", "metric_before_training", "train_runtime_s", "examples_per_s",
            "peak_memory_mb", "trainable_params", "adapter_params", "head_params", "percent_trainable")
    out = {f"final/{k}": float(results[k]) for k in keys if isinstance(results.get(k), (int, float))}
    for k, v in (results.get("test_metrics") or {}).items():
        if isinstance(v, (int, float)):
            out[f"final/test_{k}"] = float(v)
    return out


def _check_reachable(url: str, what: str, hint: str) -> None:
    """Fail fast (``REACH_TIMEOUT_S``) when nothing answers at ``url``'s host and port."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        raise LsrAdaptError(f"{what} {url!r} is not a valid URL; {hint}")
    try:
        with socket.create_connection((host, port), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as e:
        raise LsrAdaptError(f"{what} {url} is unreachable ({e.strerror or e}); {hint}") from None


def _import(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise LsrAdaptError(f"logger={module} needs the {module} package: pip install 'lsr-adapt[track]' "
                            f"(or use logger=tensorboard / logger=none)") from None


# -- Weights & Biases --------------------------------------------------------------------------
def _start_wandb(record: Mapping, options, out_dir: Path):
    mode = str(options.get("mode", "offline"))
    if mode not in WANDB_MODES:
        raise choices_error("logger.mode", mode, WANDB_MODES)
    wandb = _import("wandb")
    if mode == "online":
        base = options.get("base_url") or os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
        _check_reachable(str(base), "the wandb server", "check the network or use logger.mode=offline "
                         "(sync later with `wandb sync`)")
        os.environ["WANDB_BASE_URL"] = str(base)
    if wandb.run is not None:  # left open by a job of this process that failed
        wandb.finish(exit_code=1)
    sweep = _sweep_dir()
    group = options.get("group") or (sweep.name if sweep else None)
    run = wandb.init(project=str(options.get("project") or "lsr-adapt"), entity=options.get("entity"),
                     group=group, tags=list(options.get("tags") or []), name=out_dir.name, dir=str(out_dir),
                     mode=mode, config={"cfg": _config_dict(record)})
    log.info("wandb %s run %s in %s", mode, run.name, out_dir / "wandb")

    def close(results):
        if results is not None:
            run.summary.update(summary_metrics(results))
        run.finish(exit_code=0 if results is not None else 1)

    return close


# -- MLflow ------------------------------------------------------------------------------------
def default_mlflow_store(out_dir: Path) -> Path:
    """``<sweep dir>/mlflow.db`` for a job of a multirun, else ``<run dir>/mlflow.db``."""
    return (_sweep_dir() or out_dir).resolve() / "mlflow.db"


def _start_mlflow(record: Mapping, options, out_dir: Path):
    mlflow = _import("mlflow")
    uri = str(options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "")
    if not uri:
        uri = f"sqlite:///{default_mlflow_store(out_dir)}"
    # a SQLite store is a local file: artifacts go beside it, not to ./mlruns of the working dir
    local_store = Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None
    if local_store is not None:
        local_store.parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith(("http://", "https://")):
        _check_reachable(uri, "the MLflow tracking server", "start it, fix logger.tracking_uri, or use "
                         "logger.tracking_uri=null (a local store) or logger=none")
    experiment = str(options.get("experiment_name") or "lsr-adapt")
    if mlflow.active_run() is not None:  # left open by a job of this process that failed
        mlflow.end_run(status="FAILED")
    mlflow.set_tracking_uri(uri)
    # jobs of a parallel sweep share the store: one of them creates its tables and the experiment
    lock = _file_lock(local_store.parent / f".{local_store.name}.lock") if local_store else contextlib.nullcontext()
    with lock:
        if mlflow.get_experiment_by_name(experiment) is None:
            # beside the store, not ./mlruns in whatever directory the job runs from
            location = (local_store.parent / "mlartifacts").as_uri() if local_store else None
            mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    run = mlflow.start_run(run_name=str(options.get("run_name") or out_dir.name))
    params = {k: str(v)[:_MLFLOW_PARAM_MAX] for k, v in _flat_config(record).items()}
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
        mlflow.log_params(dict(items[i:i + 100]))
    mlflow.set_tags({"output_dir": str(out_dir.resolve()), "adaptation_type": str(record["model"]["adaptation_type"]),
                     "task": str(record["data"]["name"])})
    log.info("MLflow run %s (experiment %s) at %s", run.info.run_id, experiment, uri)

    def close(results):
        if results is not None:
            mlflow.log_metrics(summary_metrics(results))
            results_file = out_dir / RESULTS
            if results_file.exists():
                mlflow.log_artifact(str(results_file))
        mlflow.end_run(status="FINISHED" if results is not None else "FAILED")

    return close


def _file_lock(path: Path):
    from filelock import FileLock

    return FileLock(str(path), timeout=120)
