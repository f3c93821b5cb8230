"""Checkpoints and resume: small atomic checkpoints, and which one a run continues from.

* A checkpoint (``<run dir>/checkpoint-<step>/``) holds only what training changes: the trainable
  weights (adapter + head; the frozen base is rebuilt from its own checkpoint: kilobytes to a few
  MB instead of the whole model), optimizer,
  scheduler, grad scaler, every rank's RNG states, the Trainer state (global step, so the
  dataloader skips the batches already seen) and lsr-adapt's own state (per-epoch history, the
  best epoch's weights). It is written into ``.tmp-checkpoint-<step>/`` by every rank and renamed
  into place by rank 0 after a barrier, with a ``manifest.json`` (size and SHA-256 of each file)
  written last: a checkpoint directory either is complete or does not exist;
* only the newest ``keep`` complete checkpoints are kept (``publish_checkpoint``);
* ``resume_checkpoint(resume, run_dir, record)`` decides what a run continues from (``training.resume``): the
  newest checkpoint whose files match its manifest, warning about each newer one it passes over
  (torn by a crash mid-write, or damaged since), only if the run was started with the same config:
  each checkpoint keeps the resolved config it was written under (``config_resolved.yaml``, under
  its manifest's checksum), so deleting or editing the run dir's copy does not let another config
  continue it.

The Trainer writes the files (``trainer.AdapterTrainer._save_checkpoint``); this module owns their
layout, integrity and rotation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..artifacts import read_json, read_weights
from ..errors import LsrAdaptError, RunDirRefused
from ..iofiles import write_json
from ..outpaths import RUN_CONFIG

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
WEIGHTS = "trainable.safetensors"
STATE = "lsr_adapt_state.json"
BEST = "best_weights.safetensors"


def checkpoint_dirs(run_dir) -> list[Path]:
    """``checkpoint-<step>`` dirs of a run, newest (highest step) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if p.is_dir() and (m := re.fullmatch(rf"{PREFIX}(\d+)", p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (missing manifest, missing / resized / altered file), or None."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"no readable {MANIFEST} ({type(e).__name__})"
    for name, meta in manifest.get("files", {}).items():
        f = ckpt / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta["size"]:
            return f"{name} has {f.stat().st_size} bytes, not {meta['size']}"
        if _sha256(f) != meta["sha256"]:
            return f"{name} does not match its checksum"
    return None


def find_resume_checkpoint(run_dir) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` (None if there is none); newer broken ones are warned about."""
    for ckpt in checkpoint_dirs(run_dir):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        log.warning("skipping checkpoint %s: %s; falling back to an older one", ckpt, problem)
    return None


def publish_checkpoint(tmp: Path, final: Path, step: int, keep: int | None) -> None:
    """Seal a checkpoint written into ``tmp`` (manifest last, data synced) and rename it into place."""
    _write_manifest(tmp)
    _fsync_dir(tmp)
    if final.exists():  # the same step written again after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    _rotate(final.parent, step, keep)


def _write_manifest(ckpt: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(ckpt.iterdir()) if p.is_file() and p.name != MANIFEST}
    write_json(ckpt / MANIFEST, {"files": files})


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():  # the data before the rename that publishes it
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _rotate(run_dir: Path, step: int, keep: int | None) -> None:
    """Keep the newest ``keep`` checkpoints up to ``step``. Steps only grow within a run, so a higher
    one, or a ``.tmp-`` dir, is left over from an attempt that was killed (or found corrupt)."""
    kept = 0
    for ckpt in checkpoint_dirs(run_dir):
        if int(ckpt.name.removeprefix(PREFIX)) > step or (keep and kept >= keep):
            shutil.rmtree(ckpt, ignore_errors=True)
        else:
            kept += 1
    for torn in run_dir.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(torn, ignore_errors=True)


def remove_checkpoints(run_dir) -> None:
    """After a run finished: its checkpoints (and torn leftovers) only served to finish it."""
    for ckpt in [*checkpoint_dirs(run_dir), *Path(run_dir).glob(f".tmp-{PREFIX}*")]:
        shutil.rmtree(ckpt, ignore_errors=True)


def load_trainable(model, ckpt) -> None:
    """Put a checkpoint's trainable weights into ``model`` (before the Trainer wraps it in DDP)."""
    ckpt = Path(ckpt)
    saved = read_weights(ckpt / WEIGHTS)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(trainable):
        missing, extra = sorted(set(trainable) - set(saved)), sorted(set(saved) - set(trainable))
        raise LsrAdaptError(f"checkpoint {ckpt} does not fit this run's trainable weights (missing "
                            f"{missing[:3]}, unexpected {extra[:3]}): it was written by another configuration")
    with torch.no_grad():
        for n, t in saved.items():
            if trainable[n].shape != t.shape:
                raise LsrAdaptError(f"checkpoint {ckpt}: {n} has shape {list(t.shape)}, this run's "
                                    f"{list(trainable[n].shape)}: it was written by another configuration")
            trainable[n].copy_(t)


def load_recorder_state(recorder, ckpt) -> list[int]:
    """Restore the EpochRecorder from a checkpoint; returns the steps whose batch was skipped."""
    ckpt = Path(ckpt)
    info = read_json(ckpt / STATE)
    recorder.load_state_dict(info, read_weights(ckpt / BEST) if (ckpt / BEST).exists() else None)
    return list(info.get("skipped_batches", []))


# -- which checkpoint a run continues from ---------------------------------------------------------
def resume_checkpoint(resume, out_dir: Path, record: dict) -> Path | None:
    """The checkpoint this run continues from. ``resume`` (``training.resume``): ``auto`` (this run
    dir's newest intact checkpoint, if any), a checkpoint dir, an earlier run dir (its newest intact
    one), or false. ``record``: the run's resolved config (``OmegaConf.to_container(cfg, resolve=True)``),
    which must be the one the checkpoint was written under."""
    existing = checkpoint_dirs(out_dir)
    if resume in (False, None, "false"):
        if existing:
            raise RunDirRefused(f"{out_dir} holds checkpoints of an unfinished run ({existing[0].name}); "
                                f"continue it with training.resume=auto, or choose another output dir")
        return None
    if str(resume) != "auto":
        path = Path(str(resume))
        if (path / MANIFEST).exists():  # one checkpoint
            problem = checkpoint_problem(path)
            if problem:
                raise LsrAdaptError(f"training.resume={resume}: cannot resume from it: {problem}")
            _check_same_config(record, path)
            return path
        if not checkpoint_dirs(path):
            raise LsrAdaptError(f"training.resume={resume}: no such directory, or neither a checkpoint nor "
                                f"a run dir holding checkpoints; valid: auto, false, or such a path")
        ckpt = find_resume_checkpoint(path)
        if ckpt is None:
            raise LsrAdaptError(f"training.resume={resume}: none of its checkpoints is intact")
        _check_same_config(record, ckpt)
        return ckpt
    if not existing:
        return None
    ckpt = find_resume_checkpoint(out_dir)
    if ckpt is None:
        log.warning("no intact checkpoint in %s: starting from the beginning", out_dir)
        return None
    _check_same_config(record, ckpt)
    return ckpt


def _check_same_config(record: dict, ckpt: Path) -> None:
    """Refuse to continue a run that was started with a different config: the one the checkpoint was
    written under (checksummed by its manifest; a checkpoint of an older lsr-adapt without one: the
    run dir's ``config_resolved.yaml``, if it is still there)."""
    previous = ckpt / RUN_CONFIG if (ckpt / RUN_CONFIG).exists() else ckpt.parent / RUN_CONFIG
    if not previous.exists():
        return
    changed = _changed_keys(OmegaConf.to_container(OmegaConf.load(previous)), record)
    if changed:
        raise RunDirRefused(f"{ckpt.parent} holds checkpoints of a run with another config (differs in "
                            f"{', '.join(changed[:5])}); re-run the same command to resume, or choose "
                            f"another output dir")


# settings a resumed run may change: they do not touch what was trained so far
RESUME_MAY_CHANGE = {"training.resume", "output_dir", "training.callbacks", "training.keep_checkpoints",
                     "training.checkpoint_every", "training.nonfinite_loss", "training.nonfinite_max_skipped",
                     "training.report_to", "training.logging_steps", "training.dataloader_num_workers", "logger"}


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            if f"{prefix}{k}" in RESUME_MAY_CHANGE:
                continue
            if k not in old and old:  # a key lsr-adapt added since the run started: its default is the old behaviour
                continue
            out += _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]
