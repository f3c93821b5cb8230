"""``data.pad_to_max_length``: static batch shapes for CUDA-graph capture (issue 22, item 2).

``training.torch_compile_mode=reduce-overhead`` records CUDA graphs for the shapes it meets, so the
dynamic padding of the classification collator (each batch to its longest row) would re-record a
graph for every new length. With ``data.pad_to_max_length=true`` every batch is
``(batch, data.max_length)``; the attention mask makes the extra padding inert, so a run trains and
evaluates as with dynamic padding. Each run here is the shared small run (``train`` on the composed
config); a forward pre-hook (``BatchShapes``, given as ``training.callbacks``) logs the batches the model met.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import SMALL_RUN, assert_one_line_error, cli, run_train
from tolerances import EPS32
from transformers import TrainerCallback

MAX_LENGTH = 64  # experiment=smoke's data.max_length; its generated MRPC pairs are shorter (~20-40 tokens)
BATCH = 8  # SMALL_RUN's training.batch_size


class BatchShapes(TrainerCallback):
    """Logs, for every forward pass of the training loop (train steps and the per-epoch evaluations),
    ``[training?, batch, length, longest real row]`` to ``path`` as JSON when training ends."""

    def __init__(self, path: str):
        self.path, self.rows = path, []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.register_forward_pre_hook(self._log, with_kwargs=True)

    def _log(self, module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        self.rows.append([bool(module.training), *ids.shape, int(mask.sum(dim=1).max())])

    def on_train_end(self, args, state, control, **kwargs):
        Path(self.path).write_text(json.dumps(self.rows))


def _run(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, list]:
    # train() in this process on the composed config (what main.py runs, without a second interpreter's
    # imports: seconds, not the 15 s of a CLI run); the CLI's own answer is the last test's
    log = tmp_path / f"{name}.shapes.json"
    results = run_train(tmp_path / name, *SMALL_RUN,
                        # dropout draws its mask over the padded shape, so the same seed would drop other
                        # real tokens in the two runs; without it they compute the same function of the same data
                        "training.disable_dropout=true",
                        f"training.callbacks=[{{_target_:test_static_shapes.BatchShapes,path:'{log}'}}]",
                        *overrides)
    assert results == json.loads((tmp_path / name / "results.json").read_text())
    return results, json.loads(log.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The small run twice, identical but for the padding: (results, shapes) by name."""
    tmp = tmp_path_factory.mktemp("static_shapes")
    return {"dynamic": _run(tmp, "dynamic"), "static": _run(tmp, "static", "data.pad_to_max_length=true")}


def test_pad_to_max_length_gives_every_batch_the_shape_batch_by_max_length(runs):
    _, shapes = runs["static"]
    train = [r for r in shapes if r[0]]
    assert len(train) == 48 // BATCH  # one epoch of 48 rows: every training step was logged
    assert all(length == MAX_LENGTH for _, _, length, _ in shapes), shapes  # train and evaluation batches
    assert all(batch == BATCH for _, batch, _, _ in train), train
    # the padding did something: the rows are shorter than max_length
    assert max(longest for *_, longest in shapes) < MAX_LENGTH, shapes


def test_without_the_option_each_batch_is_padded_to_its_longest_row(runs):
    _, shapes = runs["dynamic"]
    assert len([r for r in shapes if r[0]]) == 48 // BATCH
    # today's DataCollatorWithPadding: no column that every row pads; lengths vary from batch to batch
    assert all(length == longest for _, _, length, longest in shapes), shapes
    assert len({length for _, _, length, _ in shapes}) > 1, shapes


def test_padding_to_max_length_trains_and_evaluates_like_dynamic_padding(runs):
    (dynamic, _), (static, _) = runs["dynamic"], runs["static"]
    # The masked positions add exact zeros (softmax weights exp(-large) = 0, zero gradients), so the
    # two runs differ only in summation order: GEMMs over B·L rows and sums over L block differently.
    # Each of the 6 steps reorders float32 sums of at most ~10^3 terms (the tiny model's hidden,
    # intermediate and B·L token reductions), each within terms·eps (tests/tolerances.py): at most
    # 6·10^3·eps ≈ 7e-4 relative in the weights, hence in the eval loss at this learning rate (measured:
    # 3e-7 on the test loss, 0 on the validation loss). A real leak of the padding (an ignored mask,
    # positions shifted by the pads) moves the loss by whole percents.
    rel = 6 * 1000 * EPS32
    pairs = {"validation": (dynamic["eval_history"][-1], static["eval_history"][-1]),
             "test": (dynamic["test_metrics"], static["test_metrics"])}
    for split, (a, b) in pairs.items():
        assert math.isclose(a["loss"], b["loss"], rel_tol=rel), (split, a, b)
        # accuracy / f1 count argmax decisions: equal unless a logit gap sits within the reorder noise
        # above, which these small samples do not have
        assert (a["accuracy"], a["f1"]) == (b["accuracy"], b["f1"]), (split, a, b)
    assert dynamic["metrics_before_training"] == static["metrics_before_training"]
    assert (dynamic["best_epoch"], dynamic["best_metric"]) == (static["best_epoch"], static["best_metric"])


def test_pad_to_max_length_must_be_a_boolean():
    proc = cli("experiment=smoke", "data.pad_to_max_length=sometimes")
    assert_one_line_error(proc, "data.pad_to_max_length", "true or false")
