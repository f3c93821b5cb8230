"""Hub ids that today's libraries accept (issue 20, part 1).

huggingface_hub >= 1.x resolves a repo's files through ``hf://`` paths whose repo id must be
``namespace/name``: ``load_dataset("glue", "mrpc")`` builds ``hf://datasets/glue@<sha>/...`` and
``HfFileSystem.resolve_path`` refuses it. Every hub id the configs can produce is checked here with
huggingface_hub's own validators, so a renamed or single-segment id cannot come back; a user's
single-segment id is one error line naming the canonical form."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CONF, ROOT, assert_one_line_error, cli, compose
from omegaconf import OmegaConf

SHA = "0" * 40  # a commit hash, as datasets puts in the paths it resolves


def _options(group: str) -> list[str]:
    """Every option of a config group (``conf/<group>/**/*.yaml``), as ``group=option``."""
    return sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml")
                  if "base" not in p.relative_to(CONF / group).parts)


def _compose_with_hydra(*overrides: str):
    """The config as ``python main.py <overrides>`` composes it, with its ``hydra`` node (the sweep)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def _is_hub_name(value) -> bool:
    """A name the loaders send to the hub: not null, not a local path."""
    return value is not None and not Path(str(value)).expanduser().exists() and not str(value).startswith(("/", "~", "."))


def assert_model_id(name: str) -> None:
    """As transformers' ``from_pretrained`` resolves it: huggingface_hub's ``validate_repo_id`` and
    its ``hf://`` parser, which takes ``namespace/name`` only."""
    from huggingface_hub.utils import parse_hf_uri, validate_repo_id

    validate_repo_id(name)
    parsed = parse_hf_uri(f"hf://{name}@{SHA}/config.json")
    assert (parsed.type, parsed.id, parsed.path_in_repo) == ("model", name, "config.json"), name


def assert_dataset_id(path: str) -> None:
    """As datasets 5's ``load_dataset(path)`` resolves it: ``HfFileSystem.resolve_path`` of
    ``datasets/<path>@<sha>/README.md`` (its single-segment refusal, then ``parse_hf_uri``)."""
    from huggingface_hub.utils import parse_hf_uri, validate_repo_id

    assert path.count("/") == 1, f"{path!r}: HfFileSystem refuses a single-segment repo id"
    validate_repo_id(path)
    parsed = parse_hf_uri(f"hf://datasets/{path}@{SHA}/README.md")
    assert (parsed.type, parsed.id, parsed.revision) == ("dataset", path, SHA), path


def _compositions() -> list[tuple[str, ...]]:
    out = [()]  # python main.py
    out += [(f"model={m}",) for m in _options("model")]
    out += [(f"data={d}",) for d in _options("data")]
    out += [(f"experiment={e}",) for e in _options("experiment")]
    return out


@pytest.mark.parametrize("overrides", _compositions(), ids=lambda o: " ".join(o) or "default")
def test_every_hub_id_the_configs_compose_is_one_huggingface_hub_accepts(overrides):
    cfg = _compose_with_hydra(*overrides)
    name = cfg.model.get("name_or_path")
    assert name is not None
    assert_model_id(str(name))  # also with model.asset set: it names the hub repo the asset copies
    path = cfg.data.get("path")
    if _is_hub_name(path) and cfg.data.get("task_type") != "gw":
        assert_dataset_id(str(path))
    # what a sweep of the experiment sets per job (a swept model= / data= option is composed above)
    params = OmegaConf.select(cfg, "hydra.sweeper.params")
    for key, values in (OmegaConf.to_container(params) if params else {}).items():
        values = str(values)
        if key in ("model.name_or_path", "data.path"):
            for value in values.split(","):
                (assert_model_id if key.startswith("model") else assert_dataset_id)(value.strip())


@pytest.mark.parametrize("backbone", _options("backbone"))
def test_every_backbone_names_its_canonical_hub_id(backbone):
    name = str(OmegaConf.load(CONF / "backbone" / f"{backbone}.yaml").name_or_path)
    assert_model_id(name)


def test_the_validators_refuse_what_the_old_configs_held():
    """The check above is not vacuous: the ids the configs held before are refused by it."""
    for old in ("roberta-base", "gpt2", "all-MiniLM-L6-v2"):
        with pytest.raises(ValueError):
            assert_model_id(old)
    for old in ("glue", "imdb", "wikitext"):
        with pytest.raises(AssertionError, match="single-segment"):
            assert_dataset_id(old)


def test_the_known_renames_are_canonical_ids():
    from lsr_adapt.hub import KNOWN_RENAMES

    for old, new in KNOWN_RENAMES.items():
        assert "/" not in old and new.split("/")[1].lower().replace("_", "-") == old.lower().replace("_", "-"), old
        assert_model_id(new)


def test_code_defaults_name_canonical_ids():
    import inspect

    from lsr_adapt import modeling

    for fn in (modeling.load_lora_model, modeling.load_lsr_model):
        assert_model_id(inspect.signature(fn).parameters["name_or_path"].default)


# -- a user's single-segment id -----------------------------------------------------------------------
@pytest.mark.parametrize(("override", "canonical"), [
    ("data.path=glue", "data.path=nyu-mll/glue"),
    pytest.param("model.name_or_path=roberta-base", "model.name_or_path=FacebookAI/roberta-base",
                 marks=pytest.mark.slow),  # the same check on the model id; in-process above
])
def test_a_single_segment_id_is_one_line_naming_the_canonical_form(tmp_path, override, canonical):
    """Through the CLI, before any model loads (config validation), never datasets' HfUriError."""
    run_dir = tmp_path / "run"
    proc = cli(override, f"hydra.run.dir={run_dir}", "training.report_to=none", cwd=tmp_path,
               env={"HF_HUB_OFFLINE": "1"})
    key, name = override.split("=")
    line = assert_one_line_error(proc, f"{key}={name!r}", "single-segment", canonical, run_dir=run_dir)
    assert "HfUriError" not in proc.stderr and "Loading" not in proc.stderr, line


@pytest.mark.parametrize(("overrides", "words"), [
    (("model.name_or_path=gpt2", "data=wikitext2"), ("model.name_or_path='gpt2'", "use model.name_or_path=openai-community/gpt2")),
    (("data=imdb", "data.path=my_reviews"), ("data.path='my_reviews'", "namespace/name", "local path")),
    (("data.path=wikitext",), ("data.path='wikitext'", "use data.path=Salesforce/wikitext")),
])
def test_config_validation_refuses_single_segment_ids(overrides, words):
    from lsr_adapt.config_schema import validate_config
    from lsr_adapt.errors import LsrAdaptError

    with pytest.raises(LsrAdaptError) as e:
        validate_config(compose(*overrides))
    assert all(w in str(e.value) for w in words), str(e.value)
    validate_config(compose(*overrides, "experiment=smoke"))  # a tiny stand-in and generated data: nothing loads from there


def test_the_data_loader_refuses_a_single_segment_id_itself():
    """``load_raw`` (predict / export / a config that skipped validation): the same line, not datasets'
    HfUriError from deep inside ``load_dataset``."""
    from lsr_adapt.data import load_raw
    from lsr_adapt.errors import LsrAdaptError

    data = OmegaConf.merge(compose("data=sst2").data, {"path": "glue"})
    with pytest.raises(LsrAdaptError, match=r"data.path='glue'.*use data.path=nyu-mll/glue"):
        load_raw(data)


def test_local_paths_and_files_pass_the_check(tmp_path):
    from lsr_adapt.hub import check_hub_id

    check_hub_id(str(tmp_path), "model.name_or_path")
    check_hub_id("model.gguf", "model.name_or_path")  # a file: its loader says it is missing
    check_hub_id("./ckpt", "model.name_or_path")
    check_hub_id(str(ROOT / "no" / "such" / "dir"), "model.name_or_path")
