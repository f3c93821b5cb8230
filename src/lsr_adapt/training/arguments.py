"""``training.*`` config → ``transformers.TrainingArguments`` (and the user's extra callbacks)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import TrainingArguments

from ..config_schema import BOOL_WORDS, CHECKPOINT_EVERY_CHOICES, PRECISIONS, SAMPLING, valid_choices
from ..distributed import world_size
from ..errors import LsrAdaptError, first_line
from ..metrics import higher_is_better
from . import compat

log = logging.getLogger(__name__)

def training_arguments(tcfg, metric: str, out_dir: Path, model, precision: dict, report_to,
                       extra: dict) -> TrainingArguments:
    """The Trainer's arguments for this run from the ``training`` section; ``metric``: ``data.metric``,
    the one that picks the best epoch; ``extra``: what the task and the method add (e.g. a paged
    optimizer, the GW task's second label); ``training.args``: any other TrainingArguments field the
    user sets (checked by ``config_schema.check_trainer_args``), applied last."""
    per_device, accumulation = per_device_batch(tcfg)
    seed = int(tcfg.seed)
    metric = str(metric)
    own = dict(
        output_dir=str(out_dir),
        num_train_epochs=float(tcfg.num_train_epochs),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=int(tcfg.eval_batch_size or tcfg.batch_size),  # null: batch_size
        gradient_accumulation_steps=accumulation,
        learning_rate=float(tcfg.learning_rate),
        weight_decay=float(tcfg.weight_decay),
        **compat.warmup_arg(tcfg.warmup_ratio),
        lr_scheduler_type=str(tcfg.lr_scheduler),
        max_grad_norm=float(tcfg.max_grad_norm),
        eval_strategy="epoch",
        **save_args(tcfg.checkpoint_every),
        logging_strategy="steps",
        logging_steps=int(tcfg.logging_steps),
        report_to=report_to,
        seed=seed,
        data_seed=seed,
        bf16=precision["bf16"],
        fp16=precision["fp16"],
        torch_compile=bool(tcfg.torch_compile),
        # reduce-overhead: CUDA graphs (the step's launches replayed as one), docs/benchmarks.md
        torch_compile_mode=str(tcfg.torch_compile_mode) if tcfg.torch_compile else None,
        dataloader_num_workers=int(tcfg.dataloader_num_workers),
        **sampling_args(tcfg.sampling),
        **fsdp_args(tcfg.fsdp, model),
        disable_tqdm=not sys.stderr.isatty(),
        use_cpu=not torch.cuda.is_available(),
        # every adapter uses all its trainable weights in every step (DyLoRA masks rows instead of
        # slicing them), so DDP need not search the graph for unused ones
        ddp_find_unused_parameters=bool(tcfg.ddp_find_unused_parameters),
        **compat.checkpointing_args(bool(tcfg.gradient_checkpointing)),
        # the metric that picks the best epoch, for what reads the Trainer's own (EarlyStoppingCallback)
        metric_for_best_model=metric,
        greater_is_better=higher_is_better(metric),
    )
    user = OmegaConf.to_container(tcfg.args, resolve=True) if tcfg.args else {}
    if "metric_for_best_model" in user and "greater_is_better" not in user:
        user["greater_is_better"] = higher_is_better(str(user["metric_for_best_model"]).removeprefix("eval_"))
    return TrainingArguments(**{**own, **extra, **user})


def precision_of(name: str) -> dict:
    cuda = torch.cuda.is_available()
    if name == "auto":
        name = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if name not in PRECISIONS:  # "auto" is resolved above
        raise LsrAdaptError(f"unknown training.precision {name!r}; {valid_choices(PRECISIONS)}")
    if name == "fp16" and not cuda:
        raise LsrAdaptError("training.precision=fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return {"bf16": name == "bf16", "fp16": name == "fp16", "_name": name}


def per_device_batch(tcfg) -> tuple[int, int]:
    """(per-device batch, accumulation steps) that keep ``training.batch_size`` the global batch
    whatever the number of processes: batch_size = per_device × processes × accumulation."""
    total, accumulation, procs = int(tcfg.batch_size), int(tcfg.gradient_accumulation_steps), world_size()
    if accumulation < 1 or total % (procs * accumulation):
        raise LsrAdaptError(f"training.batch_size={total} is not divisible by {procs} process(es) × "
                            f"training.gradient_accumulation_steps={accumulation}")
    return total // (procs * accumulation), accumulation


def fsdp_args(fsdp, model) -> dict:
    """``training.fsdp=true``: the Trainer's FSDP2 (accelerate), fully sharded, one unit per
    transformer layer. Only a multi-process launch shards."""
    if fsdp in (None, False, "false"):
        return {}
    if fsdp is not True and fsdp != "true":
        raise LsrAdaptError(f"training.fsdp={fsdp!r}; {valid_choices(BOOL_WORDS)}")
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


def check_fsdp(args, trainer) -> None:
    """accelerate applies FSDP only to accelerator (GPU) processes; on CPU it would silently run DDP."""
    if args.fsdp and not trainer.is_fsdp_enabled:  # args.fsdp is set only when fsdp_args asked for it
        device = "cuda" if torch.cuda.is_available() else "cpu"
        raise LsrAdaptError(f"training.fsdp=true but accelerate did not enable FSDP for these {world_size()} "
                            f"{device} processes (it shards on GPUs only); use training.fsdp=false (DDP)")


def sampling_args(how: str) -> dict:
    """``training.sampling``: random batches, or batches of similar length (LengthGroupedSampler: still
    shuffled, far less padding with dynamic padding; the order differs, so results are not comparable
    bit for bit with random sampling)."""
    how = str(how)
    if how not in SAMPLING:
        raise LsrAdaptError(f"training.sampling={how!r}; {valid_choices(SAMPLING)}")
    return compat.sampling_arg(how)


def save_args(every) -> dict:
    """``training.checkpoint_every``: an optimizer-step count, ``epoch``, or null (no checkpoints)."""
    if every in (None, 0, False, "none", "null"):
        return {"save_strategy": "no"}
    if str(every) == "epoch":
        return {"save_strategy": "epoch"}
    if isinstance(every, int) and every > 0:
        return {"save_strategy": "steps", "save_steps": every}
    raise LsrAdaptError(f"training.checkpoint_every={every!r}; {CHECKPOINT_EVERY_CHOICES}")


def user_callbacks(specs) -> list:
    """``training.callbacks``: TrainerCallback objects from ``{_target_: ...}`` entries (hydra.utils.instantiate)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    out = []
    for i, spec in enumerate(specs or []):
        try:
            out.append(instantiate(spec))
        except InstantiationException as e:
            raise LsrAdaptError(f"training.callbacks[{i}]: {first_line(e)}") from None
    return out
