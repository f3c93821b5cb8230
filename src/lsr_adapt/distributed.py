"""Multi-process launches (``torchrun`` / ``accelerate launch``): who writes, and one run dir for all.

The Trainer (through accelerate) owns the process group, DDP wrapping, distributed samplers
and the gathering of evaluation outputs; this module only covers what sits outside it:

* the rank of this process, read from the launcher's environment before any process group exists
  (``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE``, set by torchrun and accelerate alike);
* one run directory for every rank: Hydra names it from ``${now:...}``, which each process would
  evaluate at its own microsecond. ``share_run_stamp`` opens the process group (gloo on CPU; gloo
  for CPU tensors and NCCL for CUDA ones on GPUs; accelerate then uses it as it is) and broadcasts
  rank 0's timestamp, exported as ``LSR_ADAPT_RUN_STAMP`` for ``conf/config.yaml``;
* ranks other than 0 write no Hydra files (``.hydra/``, the log file): rank 0 writes every output;
* under FSDP (``training.fsdp``), whole tensors from sharded parameters (``full_tensor``,
  ``gather_full_weights``) and whole values written back into shards (``assign_``).
"""

from __future__ import annotations

import os
from datetime import datetime

STAMP_ENV = "LSR_ADAPT_RUN_STAMP"
STAMP_FORMAT = "%Y-%m-%d/%H-%M-%S.%f"  # the layout of conf/config.yaml's default run and sweep dirs


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def share_run_stamp() -> None:
    """Give every rank of a multi-process launch rank 0's run timestamp (see the module doc)."""
    if world_size() <= 1 or os.environ.get(STAMP_ENV):
        return
    import torch
    import torch.distributed as dist

    stamp = [datetime.now().strftime(STAMP_FORMAT) if is_main_process() else None]
    if not dist.is_initialized():
        # the group training uses (accelerate keeps an open one): re-opening the default group after
        # destroying it reuses its rendezvous keys in the launcher's store and can hang
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend, rank=rank(), world_size=world_size())
    dist.broadcast_object_list(stamp, src=0, device=torch.device("cpu"))
    os.environ[STAMP_ENV] = stamp[0]


def hydra_overrides_for_rank(argv: list[str]) -> list[str]:
    """Hydra overrides that keep ranks other than 0 from writing ``.hydra/`` and a log file."""
    if is_main_process():
        return argv
    extra = []
    if not any(a.split("=")[0].lstrip("+") == "hydra.output_subdir" for a in argv):
        extra.append("hydra.output_subdir=null")
    if not any(a.startswith("hydra/job_logging=") for a in argv):
        extra.append("hydra/job_logging=disabled")
    return argv + extra


def barrier() -> None:
    """Wait for every rank, when a process group is open (a no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# -- FSDP (training.fsdp): parameters are DTensors holding this rank's shard -------------------------
def _dtensor_cls():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4
        return None
    return DTensor


def full_tensor(t):
    """The whole tensor behind a (possibly FSDP-sharded) parameter.

    A collective under FSDP: every rank must call it, for the same tensors in the same order."""
    dtensor = _dtensor_cls()
    return t.full_tensor() if dtensor is not None and isinstance(t, dtensor) else t


def local_tensor(t):
    """This rank's shard of a sharded parameter (the tensor itself otherwise)."""
    dtensor = _dtensor_cls()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def assign_(param, value) -> None:
    """``param.copy_(value)`` for a whole ``value``, also when ``param`` is a shard (each rank keeps
    its part; every rank holds the same ``value``)."""
    dtensor = _dtensor_cls()
    if dtensor is not None and isinstance(param, dtensor):
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
    param.copy_(value)


def fsdp_modules(model) -> list:
    """The modules FSDP2 (``fully_shard``) wraps in ``model``; empty without FSDP."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def gather_full_weights(model) -> None:
    """Make every parameter of an FSDP-sharded ``model`` the whole tensor, on every rank (a
    collective), so the saving and merging code sees a plain model. For the end of a run: the
    model does not train under FSDP afterwards."""
    modules = fsdp_modules(model)
    for m in modules:
        m.unshard()  # each unit's parameters become whole tensors on every rank
    if modules:
        # FSDP's pre-save hooks would put the shards back before every state_dict()
        for module in model.modules():
            for key, hook in list(module._state_dict_pre_hooks.items()):
                if "to_sharded" in getattr(hook, "__qualname__", ""):
                    del module._state_dict_pre_hooks[key]
