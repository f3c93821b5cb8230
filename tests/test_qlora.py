"""adapters/qlora.py: NF4 against a from-scratch quantiser, what is quantized and its memory, training on CPU
(and CUDA), and the one-line errors for a missing / old bitsandbytes and bad options."""

from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from adapter_cases import FAST, R, _perturb, _prepared, needs_bnb
from helpers import run_train, tiny_classifier
from tolerances import assert_fp32_close, fp32_atol
from torch import nn

from lsr_adapt import LsrAdaptError
from lsr_adapt.adapters import METHODS, apply_adapter

QLORA_TINY = ("model.qlora.blocksize=32",)  # the tiny model's in_features is 32


def _nf4_levels() -> torch.Tensor:
    """NF4 from its definition (QLoRA paper, appendix E): quantiles of N(0, 1), 8 positive and 7
    negative (the asymmetric halves give an exact zero), normalised to [-1, 1]."""
    import numpy as np
    from scipy.stats import norm

    offset = 0.9677083  # the paper's δ = ½(1/(2·15) + 1/(2·16)) … as used by the reference code
    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    levels = np.sort(np.concatenate([pos, [0.0], neg]))
    return torch.tensor(levels / np.abs(levels).max(), dtype=torch.float32)


@needs_bnb
def test_nf4_matches_a_from_scratch_quantiser():
    from lsr_adapt.adapters.qlora import QLoRAConfig, dequantize, quantize_linear

    torch.manual_seed(0)
    lin = nn.Linear(256, 128)
    q = quantize_linear(lin, QLoRAConfig())
    w = lin.weight.detach().reshape(-1, 64)  # blocks of 64 consecutive weights
    absmax = w.abs().amax(1, keepdim=True)
    levels = _nf4_levels()
    idx = ((w / absmax)[..., None] - levels).abs().argmin(-1)
    deq = dequantize(q.weight).reshape(-1, 64)
    deq_absmax = deq.abs().amax(1, keepdim=True)
    got_idx = ((deq / deq_absmax)[..., None] - levels).abs().argmin(-1)
    assert torch.equal(got_idx, idx)  # every weight rounds to the same NF4 level
    # double-quantised scales: the absmaxes (minus their mean) in an 8-bit code: a rounding of half an
    # 8-bit step, 2⁻⁹ ≈ 0.002 relative
    assert ((deq_absmax / absmax) - 1).abs().max() < 2e-3
    x = torch.randn(5, 256)
    # bitsandbytes' 4-bit kernel vs F.linear on the dequantized weight: 256 inputs summed in another order
    assert_fp32_close(q(x), F.linear(x, dequantize(q.weight), lin.bias), terms=256 + 1)
    q.eval()
    with torch.no_grad():  # the inference path too
        assert_fp32_close(q(x), F.linear(x, dequantize(q.weight), lin.bias), terms=256 + 1)


@needs_bnb
def test_qlora_quantizes_every_frozen_encoder_linear_and_reports_memory():
    import bitsandbytes as bnb

    from lsr_adapt.adapters.qlora import QLoRAConfig, quantize_linear, weight_memory

    loaded, _, _ = _prepared("qlora")
    model = loaded.model
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    quantized = {n for n, m in linears.items() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized == {n for n in linears if n.startswith("roberta.")}  # the head stays fp32
    assert all(not isinstance(m, bnb.nn.Linear4bit) for n, m in linears.items() if n.startswith("classifier"))
    # RoBERTa-base sized layer: codes n/2 + 8-bit absmax n/64 + fp32 absmax-of-absmax per 256 blocks
    # + the two code books (16 + 256 fp32) + the fp32 offset
    n = 768 * 768
    mem = weight_memory(nn.Sequential(quantize_linear(nn.Linear(768, 768, bias=False), QLoRAConfig())))
    assert mem["quantized_params"] == n
    assert mem["quantized_bytes"] == n // 2 + n // 64 + 4 * math.ceil(n / 64 / 256) + 4 * (16 + 256) + 4
    assert mem["bytes_per_quantized_param"] <= 0.6
    no_dq = weight_memory(nn.Sequential(quantize_linear(nn.Linear(768, 768, bias=False),
                                                        QLoRAConfig(double_quant=False))))
    assert no_dq["quantized_bytes"] == n // 2 + 4 * (n // 64) + 4 * 16  # fp32 absmax per block


@needs_bnb
def test_qlora_trains_end_to_end_on_cpu(tmp_path):
    results = run_train(tmp_path, "adapter=qlora", *FAST, *QLORA_TINY)
    mem = results["base_weight_memory"]
    expected_dtype = "float32" if not torch.cuda.is_available() else (
        "bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert mem["quant_type"] == "nf4" and mem["double_quant"] and mem["compute_dtype"] == expected_dtype
    assert mem["quantized_params"] == 2 * (4 * 32 * 32 + 2 * 32 * 64)  # q k v o + up, down per layer
    assert mem["bytes_per_quantized_param"] < 4
    assert results["total_params"] == results["trainable_params"] + mem["frozen_params"]


def test_qlora_without_bitsandbytes_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    loaded = tiny_classifier()
    with pytest.raises(LsrAdaptError) as err:
        apply_adapter(loaded.model, "qlora", {"r": R})
    assert "pip install 'lsr-adapt[qlora]'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LsrAdaptError, match="needs bitsandbytes"):
        run_train(tmp_path, "adapter=qlora", *FAST, *QLORA_TINY)


@needs_bnb
def test_qlora_old_bitsandbytes_without_cuda_is_a_one_line_error(monkeypatch):
    import bitsandbytes as bnb

    monkeypatch.setattr(bnb, "__version__", "0.45.5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LsrAdaptError, match=r"without CUDA needs bitsandbytes>=0.50 .*found 0.45.5"):
        apply_adapter(tiny_classifier().model, "qlora", {"r": R, "blocksize": 32})


@needs_bnb
def test_qlora_cpu_blocksize_guard():
    """bitsandbytes' CPU dequantize is wrong when blocks straddle rows (in_features % blocksize ≠ 0):
    shown here against the flat (row-agnostic) dequantization, and refused with a one-line error."""
    import bitsandbytes.functional as bnbf

    torch.manual_seed(0)
    w = torch.randn(64, 96)
    for blocksize, in_features_ok in ((64, False), (32, True)):
        q, qs = bnbf.quantize_4bit(w, blocksize=blocksize, compress_statistics=False, quant_type="nf4")
        flat_qs = copy.copy(qs)
        flat_qs.shape = torch.Size([w.numel()])
        flat = bnbf.dequantize_4bit(q, flat_qs).reshape(w.shape)
        # the flat path is right: within half the widest NF4 gap (0.139) of the absmax, which is ≤ max|w|
        assert (flat - w).abs().max() < 0.16 * w.abs().max()
        assert torch.equal(bnbf.dequantize_4bit(q, qs), flat) == in_features_ok
    if not torch.cuda.is_available():
        with pytest.raises(LsrAdaptError, match=r"in_features \(32, layer roberta\..*blocksize \(64\)"):
            apply_adapter(tiny_classifier().model, "qlora", {"r": R})


def test_qlora_config_errors_name_the_choices():
    with pytest.raises(LsrAdaptError, match="quant_type 'int4'; valid choices: nf4, fp4"):
        METHODS["qlora"].make_config({"quant_type": "int4"})
    with pytest.raises(LsrAdaptError, match="unknown qlora option"):
        METHODS["qlora"].make_config({"bits": 4})


@needs_bnb
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_cuda_forward_backward_and_memory():
    import bitsandbytes as bnb

    from lsr_adapt.adapters.qlora import QLoRAConfig, QLoRALinear, dequantize, weight_memory

    torch.manual_seed(0)
    base = nn.Linear(768, 768).cuda()
    layer = QLoRALinear(base, QLoRAConfig(r=8, compute_dtype="bf16"))  # quantized on the GPU
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit) and layer.base_layer.weight.device.type == "cuda"
    _perturb(nn.ModuleDict({"l": layer}))
    x = torch.randn(4, 16, 768, device="cuda")
    y = layer(x)
    w = dequantize(layer.base_layer.weight).float()
    ref = F.linear(x, w, layer.base_layer.bias.float()) + layer.scaling * (x @ layer.lora_A.T) @ layer.lora_B.T
    # bf16 compute: x and W rounded to bf16 (2⁻⁹ relative each), errors of random sign over 768 products:
    # about 2⁻⁸·√768·rms(x·w) ≈ 0.4% of max|ref|; 0.05 leaves > 10× room, a wrong ΔW or scale does not fit
    assert (y.float() - ref).abs().max() < 0.05 * ref.abs().max()
    y.float().sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.dtype == torch.float32
    assert (w - base.weight).abs().max() < 0.2 * base.weight.abs().max()  # NF4: ≤ 0.139 of a block's absmax
    assert weight_memory(layer)["bytes_per_quantized_param"] <= 0.6


@needs_bnb
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_cpu_quantized_weights_move_to_cuda_unchanged():
    """train() quantizes on CPU and the Trainer moves the model: the 4-bit layout must be the same."""
    from lsr_adapt.adapters.qlora import QLoRAConfig, dequantize, quantize_linear

    torch.manual_seed(0)
    lin = nn.Linear(768, 3072)
    on_cpu = quantize_linear(lin, QLoRAConfig()).cuda()
    on_cuda = quantize_linear(copy.deepcopy(lin).cuda(), QLoRAConfig())
    assert torch.equal(on_cpu.weight.data, on_cuda.weight.data)  # the same 4-bit codes, exactly
    # Dequantised, the two need not be bit-equal: on an H100 (bitsandbytes 0.50.2, torch 2.11+cu130)
    # 0.2% of the values differed by up to 1.5e-3 of themselves, where the kernels restore the
    # double-quantised absmax differently. That is below bf16's step 2⁻⁸ (3.9e-3), the precision QLoRA
    # computes in, so the bound is 2⁻⁸ of each value; a wrong code or block scale moves values by far more.
    w_cpu, w_cuda = dequantize(on_cpu.weight).float(), dequantize(on_cuda.weight).float()
    torch.testing.assert_close(w_cpu, w_cuda, rtol=2**-8, atol=0)
    x = torch.randn(4, 768, device="cuda")
    # each output is Σᵢ xᵢ·wᵢ over 768 inputs: its change is at most Σᵢ |xᵢ|·|Δwᵢ|, plus float32 reordering
    bound = (x.abs() @ (w_cpu - w_cuda).abs().T).max().item()
    torch.testing.assert_close(on_cpu(x), on_cuda(x), rtol=0, atol=bound + fp32_atol(on_cuda(x), 768 + 3))


@needs_bnb
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_cuda_trains_with_the_paged_optimizer(tmp_path):
    results = run_train(tmp_path, "adapter=qlora", *FAST, "model.qlora.paged_optimizer=true")  # 64 on CUDA
    assert results["status"] == "completed" and results["base_weight_memory"]["compute_dtype"] == "bfloat16"
