"""The config tree's shape (issue 15, item 5): task configs share a neutral base, never each other;
``backbone=<b> adapter=<a>`` are independent groups and each method's own defaults; the demo's settings live with the demo experiments
(``conf/model_settings/demo/``), and every job of ``experiment=demo`` / ``demo_full`` composes to the
values its numbers in docs/results.md were measured with."""

from __future__ import annotations

import pytest
import yaml
from helpers import CONF, compose, sweeper_params
from omegaconf import OmegaConf

DEMO = ["head", "full", "lora", "lsr", "dora", "lora_fa", "lora_plus"]  # the adapters each demo sweeps
DEMO_FULL = [*DEMO, "dylora"]
LORA_FAMILY = {"lora", "dora", "dylora", "lora_fa", "lora_plus"}


# text classification / regression tasks; gw_disk (your GW data in gw_synthetic's format) and
# text_files (your text through wikitext2's LM pipeline) are format variants of those, not covered here
TEXT_TASKS = ["cola", "drug_reviews", "drug_reviews_3class", "imdb", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2",
              "stsb"]


def _task_files() -> list:
    return [CONF / "data" / f"{t}.yaml" for t in TEXT_TASKS]


def test_task_configs_never_inherit_from_another_task():
    """A change to MRPC must not change drug reviews: a task's defaults name only files under base/."""
    tasks = {p.stem for p in (CONF / "data").glob("*.yaml")}
    assert set(TEXT_TASKS) <= tasks
    for path in _task_files():
        defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
        parents = [d for d in defaults if d != "_self_"]
        named = [str(d).split("@")[0] for d in parents]
        assert not set(named) & tasks, f"{path.name} inherits from task config(s) {set(named) & tasks}"
        assert named and all(n.startswith("base/") for n in named), f"{path.name}: {named}"
    # the bases are not tasks: they leave the task's own values unset
    base = OmegaConf.load(CONF / "data" / "base" / "text_classification.yaml")
    assert {k for k in ("name", "text_fields", "lr") if OmegaConf.is_missing(base, k)} == {"name", "text_fields", "lr"}


@pytest.mark.parametrize(("task", "expected"), [
    ("mrpc", dict(path="nyu-mll/glue", subset="mrpc", text_fields=["sentence1", "sentence2"], metrics=["accuracy", "f1"],
                  lr=4e-4, max_length=512, num_labels=2, label_field="label")),
    ("sst2", dict(path="nyu-mll/glue", subset="sst2", text_fields=["sentence"], metrics=["accuracy"], lr=5e-4, max_length=512)),
    ("stsb", dict(path="nyu-mll/glue", task_type="regression", num_labels=1, text_fields=["sentence1", "sentence2"],
                  metric="pearson")),
    ("mnli", dict(path="nyu-mll/glue", num_labels=3, extra_eval_splits=["validation_mismatched"],
                  splits={"train": "train", "validation": "validation_matched", "test": "test_matched"})),
    ("imdb", dict(path="stanfordnlp/imdb", subset=None, text_fields=["text"], max_length=512, max_train_samples=10000,
                  sample_seed=42, lr=5e-4)),
    ("drug_reviews", dict(path=None, asset="drug_reviews", label_field="rating", num_labels=2,
                          label_names=["negative", "positive"], metrics=["accuracy", "f1", "macro_f1"], lr=1e-3,
                          max_length=256, validation_from_train=0.2, unescape_html=True,
                          splits={"train": "train", "validation": None, "test": "test"})),
    ("drug_reviews_3class", dict(asset="drug_reviews", num_labels=3, label_names=["negative", "neutral", "positive"],
                                 metrics=["accuracy", "macro_f1"], lr=1e-3, max_length=256, text_fields=["review"])),
])
def test_each_task_composes_to_its_values(task, expected):
    data = OmegaConf.to_container(compose(f"data={task}").data, resolve=True)
    assert data["name"] == task
    for key, value in expected.items():
        assert data[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_backbone_and_adapter_are_independent_groups():
    """backbone=<b> adapter=<a> is the backbone's file and the adapter's file merged into ``model``,
    nothing else: every pair composes, the adapter section is the same on every backbone, a preset
    (conf/model/) is its pair, and outside the demo the method's conf/adapter defaults hold."""
    backbones = sorted(p.stem for p in (CONF / "backbone").glob("*.yaml"))
    adapters = sorted(p.stem for p in (CONF / "adapter").glob("*.yaml"))
    assert {"roberta_base", "minilm", "smollm2", "whisper_small"} <= set(backbones)
    assert {"lora", "lsr", "dora", "head", "full", "rslora", "lsr_plus"} <= set(adapters)
    default = compose().model
    # each adapter on the default backbone, each backbone with an adapter that is not the default
    # (every pair is these two files merged, nothing between them: one pass over each axis suffices)
    pairs = [("roberta_base", a) for a in adapters] + [(b, "lsr") for b in backbones]
    for backbone, adapter in pairs:
        m = compose(f"backbone={backbone}", f"adapter={adapter}").model
        section = OmegaConf.load(CONF / "adapter" / f"{adapter}.yaml")
        method = m.adaptation_type
        assert set(m) == set(OmegaConf.load(CONF / "backbone" / f"{backbone}.yaml")) | {
            "adaptation_type", *(k for k in section if k != "defaults")}, (backbone, adapter)
        assert all(m[k] == v for k, v in OmegaConf.load(CONF / "backbone" / f"{backbone}.yaml").items())
        assert m.get(method) == compose(f"adapter={adapter}").model.get(method), (backbone, adapter)
    assert (default.name_or_path, default.adaptation_type) == ("FacebookAI/roberta-base", "lora")
    # the seed's presets: the same config as the pair they name
    assert compose("model=roberta_lsr") == compose("adapter=lsr")
    assert compose("model=roberta_lora") == compose()
    for method in ("lora", "lsr", "head"):  # the rest of minilm_*: test_demo_jobs_compose_to_the_measured_settings
        assert compose(f"model=minilm_{method}") == compose("backbone=minilm", f"adapter={method}"), method
    assert compose("adapter=rslora").model.lora.use_rslora and compose("adapter=rslora").model.adaptation_type == "lora"
    assert compose("backbone=minilm", "adapter=lora").model.lora.alpha == 8
    assert compose("backbone=minilm", "adapter=lsr").model.lsr.num_terms == 16
    # the demo's settings on any run, by name
    assert compose("model=minilm_lora", "model_settings=demo").model.lora.alpha == 16


def test_lsr_plus_states_lsr_fields_as_lsr_does():
    """adapter=lsr_plus restates LSR's fields (a defaults entry cannot move lsr.yaml's section to
    another key): they stay LSR's, α (chosen for LSR+) and lr_ratio aside."""
    lsr, plus = compose("adapter=lsr").model.lsr, compose("adapter=lsr_plus").model.lsr_plus
    assert {k: v for k, v in plus.items() if k not in ("alpha", "lr_ratio")} == {k: v for k, v in lsr.items() if k != "alpha"}


def _expected_method(method: str) -> dict:
    if method in LORA_FAMILY:
        return {"r": 8, "alpha": 16}
    if method == "lsr":
        return {"r": 4, "num_terms": 5, "alpha": 64}  # chosen by experiment=lsr_stability (docs/results.md)
    return {}


# experiment=demo (issue 25): head-only reads the mean the checkpoint was trained on, full fine-tuning at
# the lr chosen on validation for 5 epochs (docs/results.md); demo_full keeps what its table measured
DEMO_HEAD_POOLING, DEMO_FULL_FT_LR = "mean", 1e-4


@pytest.mark.parametrize(("experiment", "adapters", "seeds", "epochs", "max_length", "sampling", "head_pooling",
                          "full_lr"), [
    ("demo", DEMO, ["42"], 5, 128, "random", DEMO_HEAD_POOLING, DEMO_FULL_FT_LR),
    ("demo_full", DEMO_FULL, ["1", "2", "3", "4", "5"], 15, 256, "group_by_length", "cls", 2e-5),
])
def test_demo_jobs_compose_to_the_measured_settings(experiment, adapters, seeds, epochs, max_length, sampling,
                                                    head_pooling, full_lr):
    """Every job of the sweep: the settings docs/results.md reports (LoRA family r=8 α=16, LSR r=4
    t=5 α=64, lr 1e-3, full fine-tuning's own lr, head-only's pooling, epochs, max length, batches)."""
    params = sweeper_params(f"experiment={experiment}")
    assert params["model"].split(",") == [f"minilm_{a}" for a in adapters]  # presets: what the runs recorded
    assert params.get("training.seed", "42").split(",") == seeds
    for adapter in adapters:
        for seed in seeds[:1]:  # a seed changes training.seed alone (the last assertion), so one composes for all
            cfg = compose(f"experiment={experiment}", f"adapter={adapter}", f"training.seed={seed}")
            # the sweep's own job (model=minilm_<adapter>, as the committed runs recorded) is that config
            assert cfg == compose(f"experiment={experiment}", f"model=minilm_{adapter}", f"training.seed={seed}")
            m = cfg.model
            assert m.name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
            assert m.adaptation_type == adapter
            assert m.pooling == (head_pooling if adapter == "head" else "cls"), adapter
            section = m.get(m.adaptation_type)
            section = OmegaConf.to_container(section) if section is not None else {}
            assert {k: section[k] for k in _expected_method(adapter)} == _expected_method(adapter), adapter
            # no other method's section: the demo's settings touch only the selected method
            assert not {k for k in m if k in LORA_FAMILY | {"lsr", "lsr_plus"}} - {m.adaptation_type}
            assert cfg.data.name == "drug_reviews" and cfg.data.max_length == max_length
            assert cfg.training.num_train_epochs == epochs and cfg.training.sampling == sampling
            assert cfg.training.eval_batch_size == 64 and cfg.training.batch_size == 16
            assert cfg.training.learning_rate == pytest.approx(full_lr if adapter == "full" else 1e-3)
            assert cfg.training.warmup_ratio == pytest.approx(0.06)  # the recipe's, full fine-tuning included
            assert cfg.training.seed == int(seed) and cfg.logger.name == "none"


def test_the_recorded_demo_full_commands_keep_their_settings():
    """docs/results.md re-runs parts of demo_full with the sweep lists replaced on the command line."""
    cfg = compose("experiment=demo_full", "hydra.sweeper.params={}", "training.checkpoint_every=null",
                  "training.seed=4", "model=minilm_lora_fa", "training.learning_rate=3e-3")
    assert cfg.model.lora_fa.alpha == 16 and cfg.training.learning_rate == pytest.approx(3e-3)
    assert compose("experiment=demo_full", "adapter=lsr_plus").model.lsr_plus.num_terms == 11
    assert compose("experiment=demo_full", "adapter=rslora").model.lora.alpha == 8  # never had α=16


# -- the README's demo table (issue 25) --------------------------------------------------------------
README_DEMO_COLUMNS = {"head": "head", "full": "full", "LoRA": "lora", "LSR": "lsr", "DoRA": "dora",
                       "LoRA-FA": "lora_fa", "LoRA+": "lora_plus"}  # the README's column → adapter=
README_SHORT = {"r": "r", "α": "alpha", "t": "num_terms"}


def _readme_demo_table() -> list[list[str]]:
    """The first table after the README's `experiment=demo` command: its rows, cells stripped of bold."""
    text = (CONF.parent / "README.md").read_text()
    after = text[text.index("python main.py experiment=demo hydra.sweep.dir="):].splitlines()
    start = next(i for i, line in enumerate(after) if line.startswith("|"))
    table = []
    for line in after[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip().replace("**", "") for c in line.strip().strip("|").split("|")])
    return [table[0]] + table[2:]  # without the |---| line


@pytest.mark.slow
def test_each_demo_job_composes_to_the_settings_the_readme_names():
    """The README's demo table names each job's settings in its header ("head (mean pooling)",
    "full (lr 1e-4)", "LSR r=4 t=5 α=64"): each composes so under experiment=demo, every demo job
    has a column, and its numbers are docs/demo/report.csv's (the committed runs' report) at 3 places."""
    import csv
    import re

    header, *rows = _readme_demo_table()
    columns = header[1:]
    adapters = []
    for col in columns:
        adapter = README_DEMO_COLUMNS[col.split(" ")[0]]
        adapters.append(adapter)
        cfg = compose("experiment=demo", f"adapter={adapter}")
        m = cfg.model
        section = m.get(m.adaptation_type) or {}
        for short, value in re.findall(r"(r|α|t)=([0-9.]+)", col):
            assert float(section[README_SHORT[short]]) == float(value), (col, short)
        lr = re.search(r"lr ([0-9.e-]+)", col)
        assert float(cfg.training.learning_rate) == pytest.approx(float(lr.group(1)) if lr else 1e-3), col
        assert m.pooling == ("mean" if "mean pooling" in col else "cls"), col
    assert sorted(f"minilm_{a}" for a in adapters) == sorted(sweeper_params("experiment=demo")["model"].split(","))

    report = {r["method"]: r for r in csv.DictReader((CONF.parent / "docs" / "demo" / "report.csv").open())}
    by_label = {r[0]: r[1:] for r in rows}
    for adapter, val, test in zip(adapters, by_label["best validation accuracy"], by_label["test accuracy"]):
        row = report[adapter]
        assert (val, test) == (f"{float(row['best_mean']):.3f}", f"{float(row['test_mean']):.3f}"), adapter


def test_no_experiment_sweeps_presets_and_groups_together():
    """A sweep over model= presets and adapter= (or backbone=) at once would multiply them, and each job's
    adapter= would beat its preset's own choice: an experiment that inherits another's sweep (frontier,
    lsr_stability from demo_full) replaces the list under the same key."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    names = sorted(str(p.relative_to(CONF / "experiment"))[:-5] for p in (CONF / "experiment").rglob("*.yaml"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in names:
            cfg = hydra_compose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
            params = set(cfg.hydra.sweeper.get("params") or {})
            assert not ("model" in params and {"adapter", "backbone"} & params), (name, params)
    assert {"model", "training.seed"} <= set(sweeper_params("experiment=frontier"))  # the guard sees sweeps
