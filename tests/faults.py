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


class KillAtStepEnv(TrainerCallback):
    """SIGKILL this process after the optimizer step named by ``$LSR_TEST_KILL_AT_STEP`` (unset: no-op)."""

    def on_step_end(self, args, state, control, **kwargs):
        if str(state.global_step) == os.environ.get("LSR_TEST_KILL_AT_STEP"):
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


class KillAfterCheckpoint(TrainerCallback):
    """Kill this process right after the first checkpoint it writes, with the signal named by
    ``$LSR_TEST_KILL_AFTER_SAVE`` (``KILL``, or ``TERM`` as a cluster pre-empts); unset: no-op, so the
    killed launches and the final one are the same command."""

    def on_save(self, args, state, control, **kwargs):
        sig = os.environ.get("LSR_TEST_KILL_AFTER_SAVE")
        if sig:
            os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))


class FillDisk(TrainerCallback):
    """Fill the file system of the run dir (a small tmpfs in the tests) at the moment named by
    ``$LSR_TEST_FILL_DISK``: an optimizer step (just before that step's checkpoint is written) or
    ``end`` (after training, before the run's outputs are saved). Unset: no-op."""

    def _fill(self, args) -> None:
        fd = os.open(os.path.join(args.output_dir, "filler.bin"), os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:  # ENOSPC: the disk is full
            pass
        finally:
            os.close(fd)

    def on_step_end(self, args, state, control, **kwargs):
        if os.environ.get("LSR_TEST_FILL_DISK") == str(state.global_step):
            self._fill(args)

    def on_train_end(self, args, state, control, **kwargs):
        if os.environ.get("LSR_TEST_FILL_DISK") == "end":
            self._fill(args)


class RequireOptimizer(TrainerCallback):
    """Fail the run unless the Trainer built an optimizer of class ``name`` (e.g. ``Adafactor``)."""

    def __init__(self, name: str):
        self.name = name

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        found = type(getattr(optimizer, "optimizer", optimizer)).__name__  # accelerate wraps it
        if found != self.name:
            raise AssertionError(f"the Trainer built {found}, not {self.name}")
