"""model.pooling=mean: the head reads the attention-mask-weighted mean of the last hidden states.

Checked against a hand-computed masked mean followed by each architecture's own head, on tiny
random-init BERT, RoBERTa and DistilBERT classifiers; padding must not change a text's logits; the
choice survives save_pretrained / load_classifier through ``config.lsr_adapt_pooling``.
"""

from __future__ import annotations

import pytest
import torch
from helpers import compose

from lsr_adapt.errors import LsrAdaptError
from lsr_adapt.modeling import load_classifier, prepare_model
from lsr_adapt.pooling import POOLING_ATTR
from lsr_adapt.smoke import WORDS, tiny_checkpoint

TEXTS = [" ".join(WORDS[i % len(WORDS)] for i in range(k, k + n)) for k, n in [(0, 3), (5, 9), (11, 6)]]


def _load(family: str, pooling: str | None, path=None):
    torch.manual_seed(0)  # the same random head for every load of a family
    loaded = load_classifier(str(path or tiny_checkpoint(family)), 2, pooling=pooling)
    loaded.model.eval()
    return loaded


def _by_hand(model, family: str, batch) -> torch.Tensor:
    """Masked mean of the last hidden states, then the family's head, written out."""
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        hidden, mask = out.hidden_states[-1], batch["attention_mask"]
        rows = []
        for h, m in zip(hidden, mask):  # one text at a time: the mean over its real tokens only
            keep = [h[t] for t in range(h.shape[0]) if m[t] == 1]
            rows.append(torch.stack(keep).sum(0) / len(keep))
        mean = torch.stack(rows)
        if family == "bert":
            return model.classifier(torch.tanh(model.bert.pooler.dense(mean)))
        if family == "roberta":
            head = model.classifier
            return head.out_proj(torch.tanh(head.dense(mean)))
        pre = model.pre_classifier  # its weights, not its forward (the pooling hook sits there)
        return model.classifier(torch.relu(torch.nn.functional.linear(mean, pre.weight, pre.bias)))


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_mean_pooling_is_the_masked_mean_then_the_head(family):
    loaded = _load(family, "mean")
    model, tok = loaded.model, loaded.tokenizer
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch must hold padding for this test to mean anything"
    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.allclose(logits, _by_hand(model, family, batch), atol=1e-5)
    assert model.config.lsr_adapt_pooling == "mean"

    # padding changes nothing: each text alone (no padding), and the batch padded further
    for i, text in enumerate(TEXTS):
        alone = tok([text], return_tensors="pt")
        with torch.no_grad():
            assert torch.allclose(model(**alone).logits[0], logits[i], atol=1e-5)
    longer = tok(TEXTS, padding="max_length", max_length=batch["input_ids"].shape[1] + 7, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**longer).logits, logits, atol=1e-5)

    # the default reads the first token as before: same weights, other logits, no config record
    cls = _load(family, None)
    assert not hasattr(cls.model.config, POOLING_ATTR)
    mean_sd, cls_sd = model.state_dict(), cls.model.state_dict()
    assert mean_sd.keys() == cls_sd.keys() and all(torch.equal(mean_sd[k], cls_sd[k]) for k in mean_sd)
    with torch.no_grad():
        cls_logits = cls.model(**batch).logits
    assert not torch.allclose(cls_logits, logits, atol=1e-4)


def test_mean_pooling_survives_save_and_load(tmp_path):
    loaded = _load("bert", "mean")
    batch = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = loaded.model(**batch).logits
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    again = _load("bert", None, path=tmp_path)  # pooling=None: what the saved config records
    assert again.model.config.lsr_adapt_pooling == "mean"
    with torch.no_grad():
        assert torch.allclose(again.model(**batch).logits, before, atol=1e-6)
    # an explicit choice wins over the record
    assert _load("bert", "cls", path=tmp_path).model.config.lsr_adapt_pooling == "cls"


def test_adapters_train_through_mean_pooling():
    loaded = _load("roberta", "mean")
    prepare_model(loaded, "lsr", None, ["query", "value"])
    model = loaded.model.train()
    batch = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    loss = model(**batch, labels=torch.tensor([0, 1, 0])).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    # B₂ starts at 0, so it alone gets a gradient at step 0; the head gets one too
    assert grads["roberta.encoder.layer.1.attention.self.value.lsr_B2"].abs().sum() > 0
    assert grads["classifier.dense.weight"].abs().sum() > 0


def test_bad_and_unsupported_pooling_are_one_line_errors():
    with pytest.raises(LsrAdaptError, match=r"model.pooling='max'; valid choices: cls, mean"):
        _load("bert", "max")
    with pytest.raises(LsrAdaptError, match=r"model.pooling=mean is not supported for GPT2ForSequenceClassification"):
        _load("gpt2", "mean")


def test_the_config_option_reaches_the_model():
    from lsr_adapt.tasks import get_task

    for choice in ("model=roberta_lora", "model=minilm_lsr", "model=minilm_head", "backbone=distilbert_sst2"):
        assert compose(choice).model.pooling == "cls"  # the default: today's behaviour
    cfg = compose("experiment=smoke", "model=roberta_lora", "model.pooling=mean")
    loaded = get_task(cfg.data).load(str(tiny_checkpoint("roberta")), cfg.data, cfg.model)
    assert loaded.model.config.lsr_adapt_pooling == "mean"
    loaded = get_task(cfg.data).load(str(tiny_checkpoint("roberta")), cfg.data, {"pooling": "cls"})
    assert not hasattr(loaded.model.config, POOLING_ATTR)


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_a_mean_pooling_run_reloads_and_exports_as_it_was_trained(tmp_path):
    """The run records its pooling; predict/export rebuild it; peft (stock head) is refused, merged is exact."""
    from helpers import SMALL_RUN, assert_one_line_error, cli, run_train
    from transformers import AutoModelForSequenceClassification

    from lsr_adapt.artifacts import load_run

    run = tmp_path / "run"
    run_train(run, *SMALL_RUN, "model.pooling=mean")
    (run / "config_resolved.yaml").unlink()  # a bare adapter dir must still know: adapter_config.json records it
    live = load_run(run)
    assert live.adapter_config["pooling"] == "mean" and getattr(live.model.config, POOLING_ATTR) == "mean"
    assert_one_line_error(cli("--run", str(run), "--format", "peft", "--out", str(tmp_path / "peft"),
                              module="lsr_adapt.export"), "model.pooling=mean", "--format merged")
    proc = cli("--run", str(run), "--format", "merged", "--out", str(tmp_path / "merged"), module="lsr_adapt.export")
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = load_classifier(str(tmp_path / "merged"), 2).model.eval()  # pooling from the saved config
    assert isinstance(merged, AutoModelForSequenceClassification._model_mapping[type(merged.config)])
    batch = live.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        # fp32 both; merging reorders one sum per adapted weight, rounding ~eps·|logit| per layer
        torch.testing.assert_close(merged(**batch).logits, live.model(**batch).logits, rtol=1e-4, atol=1e-5)
