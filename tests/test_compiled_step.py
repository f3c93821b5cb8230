"""A compiled training step is the eager step (issue 22, item 2), and training.torch_compile_mode.

``training.torch_compile=true`` with ``training.torch_compile_mode=reduce-overhead`` runs the step
through torch.compile with CUDA graphs (on a CPU, inductor's code without graphs). What can be
checked without a GPU: the compiler traces each method's layers without a graph break (LSR's and
DoRA's custom autograd Functions included), and a few optimizer steps of the compiled model land
where the eager ones do. With the ``aot_eager`` backend the step goes through the same AOTAutograd
tracing as inductor (forward and backward graphs, the Functions' compile-time branches) in a
second; the inductor runs compile C++ for minutes and are marked slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_one_line_error, cli, compose, tiny_batch, tiny_classifier
from tolerances import assert_fp32_close, forward_terms
from torch import nn

from lsr_adapt.adapters import adapter_layers
from lsr_adapt.modeling import prepare_model

# tiny RoBERTa (hidden 32): LSR is forced onto its factored path (auto would pick dense at these
# dims), the one that runs as a single autograd Function
METHODS = {
    "lora": {"r": 4, "alpha": 16},
    "lsr": {"r": 2, "num_terms": 3, "alpha": 16, "path": "factored"},
    "dora": {"r": 4, "alpha": 16},
}
STEPS, LR = 3, 0.05


def _model(method: str):
    loaded = tiny_classifier()
    prepare_model(loaded, method, dict(METHODS[method]))
    model = loaded.model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at init would make two of the three steps' factor gradients zero
        for layer in adapter_layers(model).values():
            for name in layer.b_params:
                p = getattr(layer, name)
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    for module in model.modules():  # compiled and eager dropout masks differ (other RNG use)
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return loaded, model.train()


def _train(model, batch, steps=STEPS):
    """``steps`` SGD steps; returns the losses and the trained parameters' updates.

    SGD, not AdamW: Adam divides each gradient entry by its own magnitude, so an entry at rounding
    level moves its weight by ±lr whatever its size and no float tolerance would bound the change;
    SGD's update is linear in the gradient, so a gradient's reordering error stays that size.
    """
    module = getattr(model, "_orig_mod", model)  # a compiled model's parameters are its original's
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    opt = torch.optim.SGD(list(trainable.values()), lr=LR)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return torch.stack(losses), {n: (p.detach() - start[n]) for n, p in trainable.items()}


def _compare(method, backend):
    loaded, eager = _model(method)
    compiled_model = copy.deepcopy(eager)
    batch = dict(tiny_batch(loaded.tokenizer))
    batch["labels"] = torch.tensor([0, 1, 1, 0])
    losses_e, updates_e = _train(eager, batch)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(compiled_model, backend=backend)
        losses_c, updates_c = _train(compiled, batch)
    finally:
        torch._dynamo.reset()
    # compiled kernels sum in other orders (fusion, other blockings): the forward's terms per loss;
    # a gradient sums along the forward and the backward path (twice the forward's terms), and each
    # later step's gradient carries the earlier steps' differences: STEPS times that
    n = forward_terms(eager, batch)
    assert_fp32_close(losses_c, losses_e, terms=STEPS * n)
    assert set(updates_c) == set(updates_e) and any(".lsr_" in k or ".lora_" in k for k in updates_e)
    for k in updates_e:
        assert updates_e[k].abs().max() > 0, k  # every trained weight moved: the comparison is not vacuous
        assert_fp32_close(updates_c[k], updates_e[k], terms=STEPS * 2 * n, msg=k)


@pytest.mark.parametrize("method", [pytest.param("lora", marks=pytest.mark.slow), "lsr", "dora"])
def test_model_traces_without_graph_breaks_under_autocast(method):
    """The whole classifier in one graph under the bf16 autocast a GPU run uses (``fullgraph=True``
    would fail the same way on a break)."""
    loaded, model = _model(method)
    batch = dict(tiny_batch(loaded.tokenizer))
    torch._dynamo.reset()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            explained = torch._dynamo.explain(lambda **kw: model(**kw).logits)(**batch)
        assert explained.graph_break_count == 0, explained.break_reasons
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("method", ["lsr", "dora"])
def test_compiled_layer_step_equals_eager(method):
    """One adapted layer, ``fullgraph=True``: the custom Functions' forward and backward traced by
    AOTAutograd (their compile-time branches), three SGD steps, against the eager layer."""
    from lsr_adapt.adapters.dora import DoRALinear
    from lsr_adapt.adapters.lsr import LSRLinear

    torch.manual_seed(0)
    base = nn.Linear(48, 40)
    base.requires_grad_(False)
    eager = (LSRLinear(base, r=2, num_terms=3, path="factored") if method == "lsr"
             else DoRALinear(base, r=4, alpha=16))
    with torch.no_grad():
        for name in eager.b_params:
            getattr(eager, name).normal_(0, 0.1)
    twin = copy.deepcopy(eager)
    x = torch.randn(6, 7, 48)
    target = torch.randn(6, 7, 40)

    def train(layer, fn):
        opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=LR)
        start = {n: p.detach().clone() for n, p in layer.adapter_parameters().items()}
        for _ in range(STEPS):
            ((fn(x) - target) ** 2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {n: p.detach() - start[n] for n, p in layer.adapter_parameters().items()}

    updates_e = train(eager, eager)
    torch._dynamo.reset()
    try:
        updates_c = train(twin, torch.compile(twin, backend="aot_eager", fullgraph=True))
    finally:
        torch._dynamo.reset()
    for n in updates_e:
        assert updates_e[n].abs().max() > 0, n
        # aot_eager runs the same aten ops as eager (the traced graph, not fused kernels), but the
        # Kronecker expansions take their functional form (a product, then a cast): the sums along
        # the forward (48 inputs + R = 12 ranks) and backward (40 outputs, 42 tokens, R, the
        # factors' partner entries ≤ 2·8), over STEPS steps
        assert_fp32_close(updates_c[n], updates_e[n], terms=STEPS * (48 + 12 + 40 + 42 + 12 + 16), msg=n)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_compiled_step_equals_eager_aot(method):
    _compare(method, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_compiled_step_equals_eager_inductor(method):
    _compare(method, "inductor")


def test_torch_compile_mode_reaches_training_arguments(tmp_path):
    from lsr_adapt.training.arguments import precision_of, training_arguments

    loaded, model = _model("lora")
    for overrides, expected in [((), (False, None)),
                                (("training.torch_compile=true",), (True, "default")),
                                (("training.torch_compile=true", "training.torch_compile_mode=reduce-overhead"),
                                 (True, "reduce-overhead"))]:
        cfg = compose("experiment=smoke", "training.report_to=none", *overrides)
        args = training_arguments(cfg.training, cfg.data.metric, tmp_path, model, precision_of("fp32"), "none", {})
        assert (args.torch_compile, args.torch_compile_mode) == expected, overrides


@pytest.mark.parametrize("overrides,words", [
    (("training.torch_compile_mode=graphs",), ("training.torch_compile_mode='graphs'", "reduce-overhead")),
    pytest.param(("training.torch_compile_mode=reduce-overhead",), ("torch_compile_mode=reduce-overhead",
                                                                   "training.torch_compile=true"),
                 marks=pytest.mark.slow),  # a second CLI process for the second message (in-process in test_validation)
])
def test_bad_torch_compile_mode_is_one_line_error(tmp_path, overrides, words):
    proc = cli("experiment=smoke", f"output_dir={tmp_path}", "training.report_to=none", *overrides)
    assert_one_line_error(proc, *words, run_dir=tmp_path)
