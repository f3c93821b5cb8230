"""Workarounds for transformers / accelerate internals, in one place, each labelled with the versions
it was written for. When a library release changes one of these, this is the file to read.

Written against transformers 5.23-5.24 and accelerate 1.15 (the lower bounds below are the oldest
releases with the public API lsr-adapt uses; ``check_versions`` refuses older ones with one line).
"""

from __future__ import annotations

from importlib.metadata import version

from packaging.version import Version

from ..errors import LsrAdaptError

# keep in step with pyproject.toml (tests/test_app.py checks that they agree)
MIN_VERSIONS = {
    # TrainingArguments(warmup_steps=<float below 1>) as a ratio of the total steps, `dtype=` in
    # from_pretrained, `train_sampling_strategy`: all transformers 5
    "transformers": "5.0",
    # FSDP2 (`fsdp_version: 2`) through the Trainer
    "accelerate": "1.1",
}


def check_versions() -> None:
    """Installed transformers / accelerate are at least the versions this code relies on."""
    for name, minimum in MIN_VERSIONS.items():
        installed = version(name)
        if Version(installed) < Version(minimum):
            raise LsrAdaptError(f"{name} {installed} is installed; lsr-adapt needs {name} >= {minimum}: "
                                f"pip install -U '{name}>={minimum}'")


def warmup_arg(ratio: float) -> dict:
    """transformers 5: ``warmup_steps`` below 1 is a ratio of the total steps (``warmup_ratio`` is gone)."""
    return {"warmup_steps": float(ratio)}


def checkpointing_args(enabled: bool) -> dict:
    """Non-reentrant activation checkpointing (reentrant drops the gradients of a frozen base's
    inputs). transformers 5.2x names it ``activation_checkpointing``; up to 5.17 at least it was
    ``gradient_checkpointing`` (seen on a GPU machine with 5.17.0)."""
    name = "activation_checkpointing" if "activation_checkpointing" in _training_argument_names() else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}}


def _training_argument_names() -> set[str]:
    import dataclasses

    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


def sampling_arg(how: str) -> dict:
    """transformers 5 names length-grouped batching ``train_sampling_strategy``."""
    return {"train_sampling_strategy": how}


def fix_tensorboard_dir(trainer, out_dir) -> None:
    """transformers 5.23: the TensorBoard callback opens its writer in ./runs of the current
    directory when the evaluation before training comes first, unless told where."""
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback" and getattr(cb, "logging_dir", None) is None:
            cb.logging_dir = str(out_dir / "runs")


def shard_before_eval(trainer) -> None:
    """Shard the model (and its optimizer) before the evaluation that precedes training.

    accelerate 1.15 / transformers 5.23, FSDP2: model and optimizer must be prepared together (it
    swaps the optimizer's parameters for the shards), which ``evaluate()`` before ``train()`` does
    not do (transformers raises). Prepared here, ``train()`` finds both prepared and keeps them."""
    trainer.create_optimizer()
    model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model = trainer.model_wrapped = model


def unprepare_after_eval(trainer, model) -> None:
    """Let ``train()`` wrap the model in DDP after the evaluation before training.

    accelerate 1.15 / transformers 5.23: ``evaluate()`` on a fresh Trainer has accelerate prepare
    the model for evaluation and mark it prepared; ``train()`` then skips wrapping it, and each rank
    would silently train its own replica with unsynchronised gradients. Forgetting that preparation
    makes ``train()`` wrap it as it does when no evaluation came first."""
    trainer.accelerator._models.clear()
    model.__dict__.pop("_is_accelerate_prepared", None)


def _numbers(logs: dict) -> dict:
    """The logged values as numbers, 4 significant digits as transformers shows them."""
    return {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in logs.items() if k != "total_flos"}


def numeric_console_logs(trainer) -> None:
    """Print the Trainer's logs with numbers as numbers: ``{'loss': 0.7927}``, not ``{'loss': '0.7927'}``.

    transformers 5.24 (trainer_callback.py): ProgressCallback and PrinterCallback format each float
    as a string (``f"{v:.4g}"``) before printing the dict. Each is swapped for a subclass that
    rounds instead; what reaches other callbacks (trackers, results) is untouched."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class NumericProgressCallback(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None:
                self.training_bar.write(str(_numbers(logs or {})))

    class NumericPrinterCallback(PrinterCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_local_process_zero and logs is not None:
                print(_numbers(logs))

    for cls, numeric in ((ProgressCallback, NumericProgressCallback), (PrinterCallback, NumericPrinterCallback)):
        for cb in list(trainer.callback_handler.callbacks):
            if type(cb) is cls:
                trainer.remove_callback(cb)
                trainer.add_callback(numeric(**({"max_str_len": cb.max_str_len} if cls is ProgressCallback else {})))
