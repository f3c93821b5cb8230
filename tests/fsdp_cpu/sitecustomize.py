"""Test-only: let accelerate apply FSDP to CPU (gloo) processes, which it otherwise leaves to DDP.

accelerate enables FSDP only for accelerator process groups (``DistributedType.MULTI_GPU`` and
kin); torch's FSDP2 itself runs on CPU with gloo. Put this directory first on ``PYTHONPATH`` of a
``torchrun`` launch and the Trainer's real FSDP2 path (sharding, sharded optimizer checkpoints,
our gathering of whole weights) runs on the test machine. Nothing in the package imports this.
"""

import accelerate.state as _state
from accelerate.utils import DistributedType

_init = _state.AcceleratorState.__init__


def _init_with_cpu_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


_state.AcceleratorState.__init__ = _init_with_cpu_fsdp
