"""lsr-adapt: parameter-efficient fine-tuning of Hugging Face transformers (LoRA, LSR and friends)."""

__version__ = "0.1.0"

from .adapters import (  # noqa: E402
    METHODS,
    AdapterLayer,
    LoRAConfig,
    LoRALinear,
    LSRConfig,
    LSRLinear,
    apply_adapter,
    merge_adapters,
    merge_and_unload,
    register_method,
    replace_linear_with_lora,
    replace_linear_with_lsr,
    set_adapters_enabled,
    unmerge_adapters,
)
from .errors import LsrAdaptError  # noqa: E402
from .modeling import load_lora_model, load_lsr_model  # noqa: E402

__all__ = [
    "METHODS", "AdapterLayer", "LSRConfig", "LSRLinear", "LoRAConfig", "LoRALinear", "LsrAdaptError",
    "__version__", "apply_adapter", "load_lora_model", "load_lsr_model", "merge_adapters", "merge_and_unload",
    "register_method", "replace_linear_with_lora", "replace_linear_with_lsr", "set_adapters_enabled",
    "unmerge_adapters",
]
