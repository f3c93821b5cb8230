"""Adapters as artifacts, one module per job:

* ``format``: the files of an adapter directory (``adapter_model.safetensors`` +
  ``adapter_config.json``, + ``lsr_adapt_config.json`` in the peft layout), written atomically with
  a checksum, read with one-line errors;
* ``fingerprint``: a cheap fingerprint of the frozen base an adapter was trained on;
* ``peft_format``: the HF peft file format, out (LoRA, DoRA, LoKr, SVD LoRA) and in (LoRA);
* ``bank``: ``load_adapter`` into a model, and ``AdapterBank`` for several adapters on one base;
* ``runs``: a saved run rebuilt for inference (``load_run``), or continued (``init_from_run``).

docs/artifacts.md describes the files and the guarantees.
"""

from .bank import AdapterBank, artifact_from_dir, load_adapter
from .fingerprint import base_fingerprint, fingerprint_problem
from .format import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LSR_ADAPT_CONFIG,
    Artifact,
    adapter_files,
    adapter_state,
    adapter_tensors,
    read_adapter_config,
    read_json,
    read_weights,
    save_adapter,
)
from .peft_format import save_run_adapter
from .runs import LoadedRun, init_from_run, load_run, saved_run

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "LSR_ADAPT_CONFIG", "AdapterBank", "Artifact", "LoadedRun", "adapter_files",
    "adapter_state", "adapter_tensors", "artifact_from_dir", "base_fingerprint", "fingerprint_problem",
    "init_from_run", "load_adapter", "load_run", "read_adapter_config", "read_json", "read_weights", "save_adapter",
    "save_run_adapter", "saved_run",
]
