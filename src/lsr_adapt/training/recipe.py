"""``train(cfg)``: one fine-tuning run from a composed Hydra config, as a short list of named phases.

    validate → claim the run dir → sources → model + adapter → data → tracker → trainer →
    evaluate before → fit → evaluate the best weights → record → save

Each phase is one function below with one job; ``train`` reads as the recipe. The config flows down:
``validate`` checks the whole config once and returns its sections (``config_schema.RunConfig``), and
each phase receives only the sections (or values) it reads, never the whole config; ``train`` itself
keeps the run's record (the resolved config: ``config_resolved.yaml``, what a resume must match, what
a tracker logs). Kept apart from the ``@hydra.main`` wrapper in ``main.py`` so tests (and other
programs) call it with configs they compose themselves.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from ..adapters import AdapterMethod, get_method
from ..artifacts import init_from_run, save_run_adapter
from ..budget import apply_budget
from ..config_schema import RunConfig, RunSection, validate_config
from ..distributed import assign_, barrier, gather_full_weights, is_main_process, world_size
from ..errors import LsrAdaptError
from ..iofiles import write_json, writing
from ..metrics import higher_is_better
from ..modeling import LoadedModel, freeze_adapter, parameter_counts, prepare_model
from ..outpaths import RESULTS
from ..sources import Sources, resolve_sources
from ..tasks import Task, evaluate_extra, extra_eval_datasets, get_task
from ..tracking import Tracking, start_tracking, tracker_names
from . import compat
from .arguments import check_fsdp, precision_of, training_arguments, user_callbacks
from .checkpoints import load_recorder_state, load_trainable, remove_checkpoints, resume_checkpoint
from .pruning import mark_pruned, pruning_callbacks
from .recorder import EpochRecorder, check_finite
from .results import adapter_meta, majority_class, results_record
from .rundir import claim, output_dir_of, start_records
from .trainer import AdapterTrainer

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fine-tune as configured; returns the results dict also written to ``<output_dir>/results.json``."""
    sections = validate(cfg)
    model_cfg, data_cfg, training_cfg = sections.model, sections.data, sections.training
    out_dir = output_dir_of(sections.run.output_dir)
    with claim(out_dir):
        resolved = OmegaConf.to_container(cfg, resolve=True)  # the run's record as data: what a resume must match
        resume_from = resume_checkpoint(training_cfg.resume, out_dir, resolved)
        record = OmegaConf.to_yaml(cfg, resolve=True)  # the run's config: the run dir's and each checkpoint's
        start_records(out_dir, record)
        set_seed(int(training_cfg.seed))
        task = get_task(data_cfg)
        sources = resolve_sources(model_cfg, data_cfg, task)  # stand-ins and assets: files on disk
        built = build_model(model_cfg, sources, sections.budget, sections.run, training_cfg, task)
        splits, extra_eval = build_data(sources.data, training_cfg, task, built.tokenizer)
        tracking = open_tracking(sections.logger, training_cfg, out_dir, resolved)
        run = build_trainer(training_cfg, sources.data, task, built, splits, tracking, out_dir, resume_from, record)
        before = evaluate_before(run, built, extra_eval)
        fit(training_cfg, run, resume_from)
        outcome = evaluate_best(run, built, splits, extra_eval, before, resume_from)
        results = results_record(data_cfg, training_cfg, sections.run.freeze_adapter, built, task.name,
                                 outcome, run.precision, majority_class(task.name, splits))
        mark_pruned(results)  # an Optuna trial its pruner stopped early says so (training/pruning.py)
        save_run(out_dir, built, results, adapter_meta(model_cfg, data_cfg, built, task.name, built.init_info))
        run.tracking.finish(results)
    log.info("best validation %s %.4f at epoch %s; results in %s", outcome["metric"], outcome["best_metric"],
             outcome["best_epoch"], out_dir / RESULTS)
    return results


# -- 1. validate -------------------------------------------------------------------------------------
def validate(cfg: DictConfig) -> RunConfig:
    """Every value checked before any model or data loads: nothing left ``???``, types, ranges,
    choices (``config_schema``); the precision this machine can run; the trackers; libraries new enough.
    Returns the config's sections, what the phases below read (the one phase given the whole config)."""
    sections = validate_config(cfg)
    precision_of(str(sections.training.precision))  # fp16 needs CUDA
    tracker_names(sections.logger, report_to(sections.training))  # each tracker known and installed
    compat.check_versions()
    return sections


def report_to(training_cfg: DictConfig):
    """``training.report_to`` (null where the config leaves it out: the logger group's tracker)."""
    return training_cfg.get("report_to")


# -- 2. model + adapter --------------------------------------------------------------------------------
@dataclass
class BuiltModel:
    loaded: LoadedModel
    adaptation_type: str
    method: AdapterMethod
    method_values: dict  # the model.<method> section as configured (after budget matching)
    name_or_path: str  # where the weights were loaded from
    model_name: str  # the configured model, as results.json names it (sources.Sources.model_name)
    counts: dict
    head_names: list[str]
    init_info: dict | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer


def build_model(mcfg: DictConfig, sources: Sources, budget_cfg: DictConfig | None, init: RunSection,
                training_cfg: DictConfig, task: Task) -> BuiltModel:
    """The task's model class from the checkpoint ``sources`` resolved (with its data section: the
    label count, the GW window), the method's adapter around its target layers, and what trains: budget
    matching (``budget``), ``init_from`` / ``init_from_checksum`` / ``freeze_adapter`` (``init``: the
    root's), ``training.disable_dropout``."""
    adaptation_type = str(mcfg.adaptation_type)
    method = get_method(adaptation_type)
    section = mcfg.get(adaptation_type)
    method_values = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    dcfg = sources.data
    loaded = task.load(sources.model_path, dcfg, mcfg)
    target_modules = mcfg.target_modules
    if target_modules is not None and not isinstance(target_modules, str):
        target_modules = list(target_modules)
    if budget_cfg.params is not None:  # equal-budget runs: size fields from budget.params
        method_values = apply_budget(loaded, adaptation_type, method_values, target_modules, budget_cfg)
    prepared = prepare_model(loaded, adaptation_type, method_values, target_modules)
    counts = dict(prepared.counts)  # updated below by freeze_adapter; results.json records it as it ends
    built = BuiltModel(loaded, adaptation_type, method, method_values, sources.model_path, sources.model_name, counts,
                       prepared.head_names)
    if init.init_from:  # continue from a saved adapter (+ head when the label count matches)
        built.init_info = init_from_run(built.model, init.init_from, adaptation_type, loaded.method_config,
                                        int(dcfg.num_labels), check_checksum=bool(init.init_from_checksum))
    if init.freeze_adapter:  # e.g. stage 2 of "LoRA, then head only"
        freeze_adapter(built.model)
        counts.update(parameter_counts(built.model, built.head_names))
    if training_cfg.disable_dropout:  # e.g. to compare runs across process counts exactly
        for module in built.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    log.info("%s on %s: %d trainable of %d parameters (%.3f%%; adapter %d, head %d)", adaptation_type,
             dcfg.name, counts["trainable_params"], counts["total_params"], counts["percent_trainable"],
             counts["adapter_params"], counts["head_params"])
    return built


# -- 3. data ---------------------------------------------------------------------------------------------
def build_data(dcfg: DictConfig, training_cfg: DictConfig, task: Task, tokenizer) -> tuple[dict, dict]:
    """(train / validation / [test] splits, extra evaluation splits such as MNLI mismatched), from the
    ``data`` section; ``training.seed`` shuffles, ``training.num_train_epochs=0`` needs no train split."""
    seed = int(training_cfg.seed)
    splits = task.prepare_splits(dcfg, tokenizer, seed=seed, need_train=float(training_cfg.num_train_epochs) > 0)
    return splits, extra_eval_datasets(task, dcfg, tokenizer, seed)


# -- 4. trainer --------------------------------------------------------------------------------------------
@dataclass
class TrainerRun:
    trainer: AdapterTrainer
    recorder: EpochRecorder
    tracking: Tracking
    metric: str
    metric_names: list[str]
    precision: str
    train_metrics: dict = field(default_factory=dict)  # the Trainer's, after fit
    train_runtime: float = 0.0  # seconds in fit


def open_tracking(logger_cfg: DictConfig | None, training_cfg: DictConfig, out_dir: Path, resolved: dict) -> Tracking:
    """The ``logger`` section's tracker run (closed after results.json), reporting to
    ``training.report_to`` and logging the run's resolved config; rank 0 alone reports."""
    if not is_main_process():
        return Tracking("none", [])
    return start_tracking(logger_cfg, report_to(training_cfg), out_dir, resolved)


def build_trainer(tcfg: DictConfig, dcfg: DictConfig, task: Task, built: BuiltModel, splits: dict, tracking: Tracking,
                  out_dir: Path, resume_from: Path | None, record: str | None = None) -> TrainerRun:
    """The Trainer with its arguments (the ``training`` section; ``data.metric`` picks the best epoch)
    and the epoch recorder, reporting to ``tracking``; a resumed run's trainable weights and recorder
    state put back before the Trainer wraps the model."""
    metric = str(dcfg.metric)
    metric_names = list(dict.fromkeys([metric, *dcfg.metrics]))
    model, method, method_cfg = built.model, built.method, built.loaded.method_config
    recorder = EpochRecorder(model, metric, higher_is_better(metric))
    precision = precision_of(str(tcfg.precision))
    extra_args = {**task.training_args(dcfg), **(method.training_args(method_cfg) if method.training_args else {})}
    args = training_arguments(tcfg, metric, out_dir, model, precision, tracking.report_to, extra_args)
    skipped = []
    if resume_from is not None:  # before the Trainer wraps the model in DDP
        load_trainable(model, resume_from)
        skipped = load_recorder_state(recorder, resume_from)
    param_groups = None
    if method.param_groups:  # e.g. LoRA+'s faster B: built when the Trainer makes its optimizer
        def param_groups(m):
            return method.param_groups(m, method_cfg, args.learning_rate, args.weight_decay)
    trainer = AdapterTrainer(
        model=model, args=args, train_dataset=splits.get("train"), eval_dataset=splits["validation"],
        data_collator=task.collator(built.tokenizer, dcfg), processing_class=built.tokenizer,
        compute_metrics=task.compute_metrics(metric_names, dcfg), callbacks=[recorder, *user_callbacks(tcfg.callbacks), *pruning_callbacks(metric)],
        recorder=recorder, trainable_names=[n for n, p in model.named_parameters() if p.requires_grad],
        keep_checkpoints=tcfg.keep_checkpoints, nonfinite=str(tcfg.nonfinite_loss),
        skipped_batches=skipped, param_groups=param_groups, loss_metrics=task.loss_metrics,
        run_config=record,  # each checkpoint keeps it: what a resume must match
    )
    check_fsdp(args, trainer)
    compat.fix_tensorboard_dir(trainer, out_dir)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if trainer.is_fsdp_enabled:
        compat.shard_before_eval(trainer)
    return TrainerRun(trainer, recorder, tracking, metric, metric_names, precision["_name"])


# -- 5. evaluate before training ---------------------------------------------------------------------------
def evaluate_before(run: TrainerRun, built: BuiltModel, extra_eval: dict) -> dict:
    """Validation metrics of the starting weights (kept in checkpoints: a resumed run has moved on)."""
    recorder, trainer = run.recorder, run.trainer
    if recorder.before is None:
        before = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
        log.info("validation %s before training: %.4f", run.metric, before[run.metric])
        if built.init_info is not None:  # a continued run keeps its starting weights unless an epoch beats them
            recorder.consider(before[run.metric], 0)
        recorder.before = {"metrics": before, "extra": evaluate_extra(trainer, extra_eval, run.metric_names)}
    return recorder.before


# -- 6. fit -------------------------------------------------------------------------------------------------
def fit(tcfg: DictConfig, run: TrainerRun, resume_from: Path | None) -> None:
    """Train the configured epochs (the ``training`` section); a run that skipped more than ``training.nonfinite_max_skipped`` of
    its steps (``nonfinite_loss=skip``) failed, however its metrics look."""
    trainer = run.trainer
    t0 = time.perf_counter()
    if float(tcfg.num_train_epochs) > 0:
        if world_size() > 1 and not trainer.is_fsdp_enabled:
            compat.unprepare_after_eval(trainer, trainer.model)
        if resume_from is not None:
            log.info("resuming from %s", resume_from)
        run.train_metrics = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).metrics
        trainer.check_losses()
    run.train_runtime = time.perf_counter() - t0
    steps, skipped = trainer.state.global_step, len(trainer.skipped_batches)
    limit = float(tcfg.nonfinite_max_skipped)
    if steps and skipped / steps > limit:
        raise LsrAdaptError(f"{skipped} of {steps} training steps had a non-finite loss and were skipped, more than "
                            f"training.nonfinite_max_skipped={limit}: the run diverged; lower training.learning_rate")


# -- 7. evaluate the best weights -----------------------------------------------------------------------
def evaluate_best(run: TrainerRun, built: BuiltModel, splits: dict, extra_eval: dict, before: dict,
                  resume_from: Path | None) -> dict:
    """Put the best epoch's weights back, then the test split, the extra splits and the method's
    own evaluations (e.g. DyLoRA's rank table) on them."""
    trainer, recorder = run.trainer, run.recorder
    if recorder.best_state is not None:
        with torch.no_grad():
            params = dict(built.model.named_parameters())
            for n, v in recorder.best_state.items():
                assign_(params[n], v)
    test_metrics = None
    if "test" in splits:
        raw = trainer.evaluate(splits["test"], metric_key_prefix="test")
        test_metrics = {k.removeprefix("test_"): v for k, v in raw.items()
                        if k.removeprefix("test_") in run.metric_names or k == "test_loss"}
        check_finite({"loss": test_metrics.get("loss")}, "the test evaluation")
    extra_after = evaluate_extra(trainer, extra_eval, run.metric_names)  # with the best epoch's weights
    method_results = {}
    if built.method.after_train:  # on the best weights, e.g. DyLoRA's rank → metric table
        method_results = built.method.after_train(
            built.model, built.loaded.method_config,
            lambda: {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()})
    metrics_before = before["metrics"]
    return {"metric": run.metric, "metric_names": run.metric_names, "before": metrics_before,
            "history": recorder.history,
            "best_metric": recorder.best if recorder.best is not None else metrics_before[run.metric],
            "best_epoch": recorder.best_epoch if recorder.best_epoch is not None else 0,
            "test_metrics": test_metrics, "extra": {"before": before["extra"], "after": extra_after},
            "resumed_from": resume_from, "skipped": trainer.skipped_batches, "method_results": method_results,
            "train_metrics": run.train_metrics, "train_runtime": run.train_runtime}


# -- 8. save -------------------------------------------------------------------------------------------------
def save_run(out_dir: Path, built: BuiltModel, results: dict, meta: dict) -> None:
    """The adapter, then ``results.json`` (its presence marks the run finished), then the checkpoints
    go: they only served to finish it. Rank 0 writes; every rank gathers FSDP shards first."""
    gather_full_weights(built.model)
    if is_main_process():
        with writing(out_dir, "the run's outputs in"):  # e.g. a full disk: one line, no results.json
            save_run_adapter(built.model, out_dir, meta)  # peft's layout where it is exact
            write_json(out_dir / RESULTS, results)
        remove_checkpoints(out_dir)
    barrier()  # no rank returns before the outputs exist
