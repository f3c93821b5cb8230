"""Trainer callbacks that inject faults into test runs (used through ``training.callbacks``)."""

from __future__ import annotations

import os
import signal

from transformers import TrainerCallback


class KillAtStep(TrainerCallback):
    """SIGKILL this process after optimizer step ``step`` when ``$LSR_TEST_KILL`` is set (so the killed
    and the resumed run are the same command)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and os.environ.get("LSR_TEST_KILL"):
            os.kill(os.getpid(), signal.SIGKILL)


class CrashAtStep(TrainerCallback):
    """Raise (an in-process stand-in for a crash) after optimizer step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"injected crash after step {self.step}")


class NaNLossAtStep(TrainerCallback):
    """Make the training loss of optimizer step ``step`` (1-based) NaN, through a forward hook."""

    def __init__(self, step: int):
        self.step, self.armed, self.hooked = step, False, False

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if not self.hooked:
            model.register_forward_hook(self._poison)
            self.hooked = True
        self.armed = state.global_step + 1 == self.step

    def on_step_end(self, args, state, control, **kwargs):
        self.armed = False

    def _poison(self, module, inputs, output):
        if self.armed and module.training and output.get("loss") is not None:
            output["loss"] = output["loss"] * float("nan")
        return output


class RequireGradientCheckpointing(TrainerCallback):
    """Fail the run unless the Trainer turned activation checkpointing on in the model."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not getattr(model, "is_gradient_checkpointing", False):
            raise AssertionError("activation checkpointing is not enabled in the model")
