"""``validate_config(cfg)``: the whole composed config checked once, before any model or data loads.

Each section is a declared schema (pydantic v2 models below): types, ranges and choices, every field
with the sentence a user reads when its value is wrong. The first problem found stops the run with
one line naming the key, the value and what is allowed, e.g.

    training.learning_rate=-1.0: must be a number > 0
    training.sampling='sorted'; valid choices: random, group_by_length
    unknown key training.lr; valid keys: batch_size, callbacks, ...

Sections:

* ``training``: closed (an unknown key is an error naming the valid keys);
* ``data``, ``model``, the root: their generic keys; task-specific keys (the GW task's signal
  parameters, a causal LM's ``append_eos``, ...) are checked by the task that reads them;
* ``model.<adaptation_type>``: the method's own config dataclass (``get_method(name).make_config``:
  unknown keys, and the ranges, choices and cross-field rules of its ``__post_init__``); a bad value
  of one field is reported with its full key (``model.lora.r=0: must be an integer >= 1``);
* ``budget``: the equal-budget options.

What needs the model or the data (target modules that match no layer, LSR factors that do not divide
a layer's dimensions, label values) is checked where they load.

It returns what it checked, one section per phase of a run (:class:`RunConfig`): ``model``, ``data``,
``training``, ``budget``, ``logger`` (read-only nodes of a copy of the config: the values, and any
interpolation between sections, as composed) and ``run`` (the root's ``output_dir`` / ``init_from`` /
``init_from_checksum`` / ``freeze_adapter``). ``train`` hands each phase its own sections, never the
whole config.
"""

from __future__ import annotations

import codecs
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .adapters import get_method
from .budget import LSR_FREE_FIELDS
from .data import SPLIT_ROLES, synthetic_sizes
from .errors import LsrAdaptError, bad_value, first_line, show_value
from .hub import check_hub_id
from .metrics import check_metric_names
from .pooling import POOLINGS
from .tasks import task_type_of

__all__ = ["BOOL_WORDS", "CHECKPOINT_EVERY_CHOICES", "MANAGED_TRAINER_ARGS", "NONFINITE_POLICIES", "PRECISIONS",
           "SAMPLING", "SCHEMAS", "RunConfig", "RunSection", "check_trainer_args", "missing_values", "valid_choices",
           "validate_config"]


# -- field types ----------------------------------------------------------------------------------
def _no_bool(v):
    """YAML's true/false are not numbers (pydantic's lax mode would read them as 1 / 0)."""
    if isinstance(v, bool):
        raise ValueError("a boolean is not a number")
    return v


BOOL_WORDS = ("true", "false")


def _bool_or_word(v):
    """``true`` / ``false``, also as the words (training has always accepted them for fsdp)."""
    if isinstance(v, str) and v.lower() in BOOL_WORDS:
        return v.lower() == "true"
    return v


Number = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
Integer = Annotated[int, BeforeValidator(_no_bool)]
Bool = Annotated[bool, Field(strict=True)]
Text = Annotated[str, Field(strict=True)]


def _f(allowed: str, **constraints) -> Any:
    """A field whose error message is ``allowed``: "must be ..." or "valid choices: ...". No default
    value: the YAML configs are the one source of defaults, and a key they leave out is not checked."""
    return Field(None, description=allowed, **constraints)


# -- the sets of valid choices, declared once: the schema's Literal types and messages below, and the
# code that acts on a value (training/arguments.py, training/trainer.py), import them from here ------
# transformers' SchedulerType values, listed here so validation needs no import of transformers'
# trainer stack (seconds); tests/test_validation.py checks each is one transformers accepts
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
              "warmup_stable_decay")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SAMPLING = ("random", "group_by_length")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes
NONFINITE_POLICIES = ("stop", "skip")  # training.nonfinite_loss: stop the run, or skip the batch
DTYPES = ("float32", "float16", "bfloat16")  # model.dtype: the torch dtype the base loads in
CHECKPOINT_EVERY_CHOICES = "valid choices: a positive number of optimizer steps, epoch, or null (no checkpoints)"


def valid_choices(values) -> str:
    """``valid choices: a, b, c`` (the words every message about a choice ends with)."""
    return "valid choices: " + ", ".join(map(str, values))


def _checkpoint_every(v):
    """An optimizer-step count, ``epoch``, or null; 0 / false / none also mean no checkpoints."""
    if v is None or v is False or v in ("none", "null", "epoch"):
        return v
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    raise ValueError("bad checkpoint_every")


def _resume(v):
    if v in (None, False, "false", "auto"):
        return v
    if isinstance(v, str) and v.strip():
        return v  # a checkpoint or run dir: train checks it exists and holds checkpoints
    raise ValueError("bad resume")


def _callbacks(v):
    if v is None:
        return v
    if isinstance(v, list) and all(isinstance(c, Mapping) and "_target_" in c for c in v):
        return v
    raise ValueError("bad callbacks")


# -- training --------------------------------------------------------------------------------------
class TrainingSchema(BaseModel):
    """``conf/training/lora_training.yaml``: every key train() reads; no other key is accepted."""

    model_config = ConfigDict(extra="forbid")

    num_train_epochs: Number = _f("must be a number >= 0 (0: evaluate only)", ge=0)
    batch_size: Integer = _f("must be an integer >= 1 (the global batch)", ge=1)
    eval_batch_size: Annotated[Integer, Field(ge=1)] | None = _f("must be an integer >= 1, or null (= batch_size)")
    learning_rate: Number = _f("must be a number > 0", gt=0)
    weight_decay: Number = _f("must be a number >= 0", ge=0)
    warmup_ratio: Number = _f("must be a number in [0, 1) (a fraction of the training steps)", ge=0, lt=1)
    lr_scheduler: Literal[SCHEDULERS] = _f(valid_choices(SCHEDULERS))  # type: ignore[valid-type]
    max_grad_norm: Number = _f("must be a number >= 0 (0: no gradient clipping)", ge=0)
    gradient_accumulation_steps: Integer = _f("must be an integer >= 1", ge=1)
    seed: Integer = _f("must be an integer in [0, 2**32)", ge=0, lt=2**32)
    precision: Literal[PRECISIONS] = _f(valid_choices(PRECISIONS))  # type: ignore[valid-type]
    torch_compile: Bool = _f("must be true or false")
    torch_compile_mode: Literal[COMPILE_MODES] = _f(valid_choices(COMPILE_MODES))  # type: ignore[valid-type]
    report_to: Text | list[Text] | None = _f("must be a tracker name or a list of them (tensorboard, the logger "
                                             "group's wandb / mlflow, any transformers integration), or none")
    logging_steps: Integer = _f("must be an integer >= 1 (optimizer steps)", ge=1)
    dataloader_num_workers: Integer = _f("must be an integer >= 0", ge=0)
    sampling: Literal[SAMPLING] = _f(valid_choices(SAMPLING))  # type: ignore[valid-type]
    checkpoint_every: Annotated[Any, BeforeValidator(_checkpoint_every)] = _f(CHECKPOINT_EVERY_CHOICES)
    keep_checkpoints: Annotated[Integer, Field(ge=1)] | None = _f("must be an integer >= 1, or null (keep all)")
    resume: Annotated[Any, BeforeValidator(_resume)] = _f("valid choices: auto, false, or a checkpoint / run dir to continue from")
    nonfinite_loss: Literal[NONFINITE_POLICIES] = _f(valid_choices(NONFINITE_POLICIES))  # type: ignore[valid-type]
    nonfinite_max_skipped: Number = _f("must be a number in [0, 1] (the share of steps nonfinite_loss=skip "
                                             "may drop before the run counts as diverged)", ge=0, le=1)
    gradient_checkpointing: Bool = _f("must be true or false")
    ddp_find_unused_parameters: Bool = _f("must be true or false")
    fsdp: Annotated[Bool, BeforeValidator(_bool_or_word)] = _f(valid_choices(BOOL_WORDS))
    disable_dropout: Bool = _f("must be true or false")
    callbacks: Annotated[Any, BeforeValidator(_callbacks)] = _f("must be a list of {_target_: package.Class, ...} entries (transformers TrainerCallbacks)")
    args: Mapping[str, Any] | None = _f("must be a mapping of transformers TrainingArguments fields "
                                         "(training.args.optim=adafactor)")


# -- training.args: any other TrainingArguments field -------------------------------------------------
# TrainingArguments fields that lsr-adapt sets from its own keys (training/arguments.py): given in
# training.args they would be overwritten or fight them, so each names the key that sets it.
MANAGED_TRAINER_ARGS = {
    "output_dir": "output_dir / hydra.run.dir", "num_train_epochs": "training.num_train_epochs",
    "per_device_train_batch_size": "training.batch_size", "per_device_eval_batch_size": "training.eval_batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "learning_rate": "training.learning_rate", "weight_decay": "training.weight_decay",
    "warmup_ratio": "training.warmup_ratio", "warmup_steps": "training.warmup_ratio",
    "lr_scheduler_type": "training.lr_scheduler", "max_grad_norm": "training.max_grad_norm",
    "save_strategy": "training.checkpoint_every", "save_steps": "training.checkpoint_every",
    "logging_steps": "training.logging_steps", "report_to": "training.report_to / the logger group",
    "seed": "training.seed", "data_seed": "training.seed", "bf16": "training.precision", "fp16": "training.precision",
    "torch_compile": "training.torch_compile", "torch_compile_mode": "training.torch_compile_mode",
    "dataloader_num_workers": "training.dataloader_num_workers", "group_by_length": "training.sampling",
    "train_sampling_strategy": "training.sampling", "fsdp": "training.fsdp", "fsdp_config": "training.fsdp",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "ddp_find_unused_parameters": "training.ddp_find_unused_parameters", "use_cpu": "the machine (no GPU: CPU)",
    "load_best_model_at_end": "lsr-adapt itself: it always puts the best epoch's weights back (data.metric picks it)",
}


def check_trainer_args(args: Mapping | None, metric_names: list[str]) -> None:
    """``training.args``: each key a ``TrainingArguments`` field lsr-adapt does not set itself, each
    value of the field's type (an enum-valued field: one of its choices). Imports transformers'
    training arguments (seconds) only when there is something to check."""
    if not args:
        return
    import dataclasses
    import difflib
    import enum
    import typing

    from pydantic import TypeAdapter
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    hints = typing.get_type_hints(TrainingArguments)
    for key, value in args.items():
        where = f"training.args.{key}={show_value(value)}"
        if key in MANAGED_TRAINER_ARGS:
            raise LsrAdaptError(f"{where}: lsr-adapt sets {key} from {MANAGED_TRAINER_ARGS[key]}; use that instead")
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=3)
            raise LsrAdaptError(f"unknown key training.args.{key}: not a transformers TrainingArguments field"
                                + (f" (did you mean {', '.join(close)}?)" if close else ""))
        hint = hints.get(key)
        options = typing.get_args(hint) or (hint,)
        enums = [t for t in options if isinstance(t, type) and issubclass(t, enum.Enum)]
        if enums and isinstance(value, str):
            choices = [e.value for t in enums for e in t]
            if value not in choices:
                raise LsrAdaptError(f"{where}; valid choices: {', '.join(map(str, choices))}")
            continue
        try:
            TypeAdapter(hint).validate_python(value, strict=isinstance(value, bool) or hint in (int, float))
        except ValidationError:
            raise LsrAdaptError(f"{where}: must be {_type_words(hint)} (TrainingArguments.{key})") from None
        except Exception:  # a hint pydantic cannot build a validator for: TrainingArguments checks it
            pass
    best = args.get("metric_for_best_model")
    if best is not None and str(best).removeprefix("eval_") not in [*metric_names, "loss"]:
        raise LsrAdaptError(f"training.args.metric_for_best_model={best}: not a metric this run evaluates; "
                            f"valid choices: {', '.join([*metric_names, 'loss'])}")


def _type_words(hint) -> str:
    import typing

    names = [getattr(t, "__name__", str(t)) for t in (typing.get_args(hint) or (hint,))]
    return " or ".join("null" if n == "NoneType" else f"a {n}" for n in names)


# -- data --------------------------------------------------------------------------------------------
def _encoding(v):
    if not isinstance(v, str):
        raise ValueError("not a string")
    try:
        codecs.lookup(v)
    except LookupError:
        raise ValueError("unknown codec") from None
    return v


def _splits(v):
    if v is None or isinstance(v, Mapping) and set(v) <= set(SPLIT_ROLES) and all(s is None or isinstance(s, str) for s in v.values()):
        return v
    raise ValueError("bad splits")


def _data_files(v):
    if v is None or (isinstance(v, Mapping) and v and all(isinstance(f, str) for f in v.values())):
        return v
    raise ValueError("bad data_files")


PositiveInt = Annotated[Integer, Field(ge=1)]


class DataSchema(BaseModel):
    """The keys every data config shares (``conf/data/mrpc.yaml``, ``wikitext2.yaml``); a task's own
    keys (e.g. the GW signal parameters) are checked by the task."""

    model_config = ConfigDict(extra="allow")

    name: Text = _f("must be a name")
    path: Text | None = _f("must be a hub dataset name or a local path, or null")
    subset: Text | None = _f("must be a hub dataset config name, or null")
    data_files: Annotated[Any, BeforeValidator(_data_files)] = _f("must be null or a mapping split -> file, e.g. {train: train.csv, validation: dev.csv}")
    text_fields: list[Text] = _f("must be a list of column names")
    label_field: Text | None = _f("must be a column name")
    num_labels: Integer = _f("must be an integer >= 0 (1: regression, 0: no task head)", ge=0)
    label_names: list[Annotated[str, BeforeValidator(lambda v: v if isinstance(v, str) else str(v))]] | None = _f("must be a list of label values (strings), or null")
    metric: Text = _f("must be a metric name")
    metrics: list[Text] = _f("must be a list of metric names")
    lr: Annotated[Number, Field(gt=0)] | None = _f("must be a number > 0")
    max_length: PositiveInt | None = _f("must be an integer >= 1 (tokens), or null (the tokenizer's limit)")
    pad_to_max_length: Bool = _f("must be true or false (true: every batch padded to data.max_length, static shapes for CUDA graphs)")
    splits: Annotated[Any, BeforeValidator(_splits)] = _f("must be a mapping from train / validation / test to a split name or null")
    max_train_samples: PositiveInt | None = _f("must be an integer >= 1, or null (all)")
    max_eval_samples: PositiveInt | None = _f("must be an integer >= 1, or null (all)")
    sample_seed: Annotated[Integer, Field(ge=0)] | None = _f("must be an integer >= 0, or null (training.seed)")
    seed: Annotated[Integer, Field(ge=0)] = _f("must be an integer >= 0")
    validation_from_train: Annotated[Number, Field(gt=0, lt=1)] | None = _f("must be a number in (0, 1) (the fraction of train held out), or null")
    extra_eval_splits: list[Text] = _f("must be a list of split names")
    synthetic: Bool = _f("must be true or false")
    synthetic_sizes: dict[str, PositiveInt] | None = _f("must map split roles to integers >= 1")
    unescape_html: Bool = _f("must be true or false")
    encoding: Annotated[str, BeforeValidator(_encoding)] = _f("must be a Python codec name, e.g. utf-8, latin-1, cp1252, utf-16")
    drop_unknown_labels: Bool = _f("must be true or false")
    asset: Text | None = _f("must be an asset name, or null")


# -- model -------------------------------------------------------------------------------------------
def _target_modules(v):
    if v is None or isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(m, str) for m in v)):
        return v
    raise ValueError("bad target_modules")


class ModelSchema(BaseModel):
    """The keys every model config shares (``conf/backbone/*.yaml`` + ``adaptation_type``)."""

    model_config = ConfigDict(extra="allow")

    name_or_path: Text = _f("must be a hub model id or a local checkpoint path")
    adaptation_type: Text = _f("must be a method name")
    target_modules: Annotated[Any, BeforeValidator(_target_modules)] = _f("must be a list of layer names, 'all-linear', or null (the backbone's default)")
    family: Text | None = _f("must be an architecture name")
    tiny: Bool = _f("must be true or false")
    asset: Text | None = _f("must be an asset name, or null")
    lr: Annotated[Number, Field(gt=0)] | None = _f("must be a number > 0, or null")
    dtype: Literal[DTYPES] | None = _f(valid_choices([*DTYPES, "null"]))  # type: ignore[valid-type]
    pooling: Literal[POOLINGS] | None = _f(valid_choices([*POOLINGS, "null"]))  # type: ignore[valid-type]


# -- budget and the root ---------------------------------------------------------------------------
class BudgetSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: PositiveInt | None = _f("must be an integer >= 1 (adapter parameters), or null")
    lsr_free: list[Literal[LSR_FREE_FIELDS]] = _f(  # type: ignore[valid-type]
        f"must be a non-empty list of: {', '.join(LSR_FREE_FIELDS)}", min_length=1)
    tolerance: Number = _f("must be a number > 0 (the largest |size - budget| / budget accepted)", gt=0)
    allow_nearest: Bool = _f("must be true or false (true: train the nearest size even beyond budget.tolerance)")


class RootSchema(BaseModel):
    model_config = ConfigDict(extra="allow")

    output_dir: Text | None = _f("must be a directory path, or null (the Hydra run dir)")
    init_from: Text | None = _f("must be a run or adapter directory, or null")
    init_from_checksum: Bool = _f("must be true or false (false: load an init_from adapter edited on purpose)")
    freeze_adapter: Bool = _f("must be true or false")


SCHEMAS: dict[str, type[BaseModel]] = {"training": TrainingSchema, "data": DataSchema, "model": ModelSchema,
                                       "budget": BudgetSchema}

# messages the tests (and users' scripts) already know, kept word for word
_MESSAGES = {"training.nonfinite_loss": "unknown training.nonfinite_loss {value}; " + valid_choices(NONFINITE_POLICIES)}


# -- checking --------------------------------------------------------------------------------------
def _check(schema: type[BaseModel], values: Mapping, prefix: str) -> None:
    """Validate ``values`` against ``schema``; the first error becomes one ``LsrAdaptError`` line."""
    try:
        schema.model_validate(dict(values))
    except ValidationError as e:
        raise _one_line(e, schema, values, prefix) from None


def _one_line(e: ValidationError, schema: type[BaseModel], values: Mapping, prefix: str) -> LsrAdaptError:
    err = e.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    key = f"{prefix}.{field}" if prefix else field
    if err["type"] == "extra_forbidden":
        return LsrAdaptError(f"unknown key {key}; valid keys: {', '.join(sorted(schema.model_fields))}")
    value = values.get(field, err.get("input"))
    if key in _MESSAGES:
        return LsrAdaptError(_MESSAGES[key].format(value=show_value(value)))
    info = schema.model_fields.get(field)
    allowed = info.description if info is not None and info.description else err["msg"]
    return bad_value(key, value, allowed)


def missing_values(cfg, prefix: str = "") -> list[str]:
    """Keys set to ``???``, found without resolving interpolations (a missing value referenced by an
    interpolation would raise instead of being listed)."""
    out = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            out.append(f"{prefix}{key}")
        elif isinstance(node := cfg._get_node(key), DictConfig) and not OmegaConf.is_interpolation(cfg, key):
            out += missing_values(node, f"{prefix}{key}.")
    return sorted(out)


def _resolved(cfg: DictConfig) -> dict:
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        first = first_line(e)
        key = getattr(e, "full_key", None)
        raise LsrAdaptError(f"config value {key or ''} cannot be resolved: {first}".replace("value  ", "value "))\
            from None


# -- what was validated, one section per phase -----------------------------------------------------
@dataclass(frozen=True)
class RunSection:
    """The root's run-level keys (``RootSchema``), as validated: where the run writes, the adapter it
    starts from, and whether that adapter trains."""

    output_dir: str | None
    init_from: str | None
    init_from_checksum: bool | None
    freeze_adapter: bool | None


@dataclass(frozen=True)
class RunConfig:
    """``validate_config``'s answer: the composed config's sections, each what one phase of ``train``
    reads. ``model`` / ``data`` / ``training`` / ``budget`` / ``logger`` are read-only nodes of a copy of
    the config (their values, interpolations included, exactly as composed; the caller's config is
    left as it was); ``budget`` and ``logger`` are None where the config has none."""

    run: RunSection
    model: DictConfig
    data: DictConfig
    training: DictConfig
    budget: DictConfig | None
    logger: DictConfig | None


def _sections(cfg: DictConfig, values: Mapping) -> RunConfig:
    view = copy.deepcopy(cfg)  # read-only, so no phase can change what another reads
    OmegaConf.set_readonly(view, True)
    run = RunSection(output_dir=values.get("output_dir"), init_from=values.get("init_from"),
                     init_from_checksum=values.get("init_from_checksum"), freeze_adapter=values.get("freeze_adapter"))
    return RunConfig(run=run, model=view.model, data=view.data, training=view.training,
                     budget=view.get("budget"), logger=view.get("logger"))


def validate_config(cfg: DictConfig) -> RunConfig:
    """Check the whole composed config (types, ranges, choices) before anything loads; returns its
    sections (:class:`RunConfig`), what the phases of a run read.

    Raises ``LsrAdaptError`` with one line naming the key, the bad value and what is allowed.
    """
    missing = missing_values(cfg)
    if missing:  # `???` in a config, e.g. stage1_run of a two-stage experiment
        raise LsrAdaptError(f"config value(s) {', '.join(missing)} must be set, e.g. {missing[0]}=...")
    values = _resolved(cfg)
    for section in ("model", "data", "training"):
        if not isinstance(values.get(section), Mapping):
            raise LsrAdaptError(f"the config has no {section} section; choose one, e.g. {section}=...")
    _check(RootSchema, values, "")
    _check(TrainingSchema, values["training"], "training")
    if values["training"].get("torch_compile_mode", "default") != "default" and not values["training"].get("torch_compile"):
        raise LsrAdaptError(f"training.torch_compile_mode={values['training']['torch_compile_mode']} compiles nothing "
                            "with training.torch_compile=false; set training.torch_compile=true")
    _check_model(values["model"])
    _check_data(cfg.data, values["data"])
    check_trainer_args(values["training"].get("args"),
                       list(dict.fromkeys([values["data"].get("metric"), *(values["data"].get("metrics") or [])])))
    if values.get("budget") is not None:
        if not isinstance(values["budget"], Mapping):
            raise LsrAdaptError(f"budget={show_value(values['budget'])}: must be a mapping (budget.params, budget.lsr_free)")
        _check(BudgetSchema, values["budget"], "budget")
    return _sections(cfg, values)


def _check_model(model: Mapping) -> None:
    _check(ModelSchema, model, "model")
    _check_asset("model", model.get("asset"))
    if not model.get("tiny") and not model.get("asset") and model.get("name_or_path") is not None:
        check_hub_id(model["name_or_path"], "model.name_or_path")  # loaded from there: a hub id today's hub accepts
    name = str(model["adaptation_type"]) if model.get("adaptation_type") is not None else ""
    method = get_method(name)  # unknown: "unknown adaptation_type 'x'; valid choices: ..."
    section = model.get(name)
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise LsrAdaptError(f"model.{name}={show_value(section)}: must be a mapping of {name} options")
    try:  # the method's dataclass: unknown options, ranges, choices and cross-field rules (DyLoRA eval_rank <= r)
        method.make_config(section)
    except LsrAdaptError as e:
        if e.key is None:  # not one field's value (an unknown option, a cross-field rule): as it is
            raise
        raise bad_value(f"model.{name}.{e.key}", e.value, e.allowed) from None


def _check_asset(section: str, name) -> None:
    """``model.asset`` / ``data.asset``: a name of ``assets.py`` of that kind (fetched or not: a
    missing one is refused when the run resolves it, with the command that fetches it)."""
    # imported here: `python -m lsr_adapt.assets` must not find it imported
    from .assets import DATA_ASSETS, MODEL_ASSETS

    names = MODEL_ASSETS if section == "model" else DATA_ASSETS
    if name is not None and str(name) not in names:
        raise bad_value(f"{section}.asset", name, f"valid choices: {', '.join(names)}, or null")


def _check_data(data_cfg: DictConfig, data: Mapping) -> None:
    _check(DataSchema, data, "data")
    task = task_type_of(data_cfg)  # data.task_type and its num_labels
    _check_asset("data", data.get("asset"))
    if data.get("synthetic"):
        synthetic_sizes(data)  # generated data: how many rows per split, stated by the data config
    if task != "gw" and data.get("path") is not None and not (data.get("synthetic") or data.get("asset")
                                                              or data.get("data_files")):
        check_hub_id(data["path"], "data.path", "dataset")  # load_dataset(path): 'glue' fails inside datasets
    if task != "gw":  # the GW task knows metrics of its own (roc_auc, ...) and checks them itself
        check_metric_names(list(data.get("metrics") or []) + [data.get("metric")])
    names = data.get("label_names")
    if task == "classification" and names:
        if len(names) != int(data["num_labels"]):
            raise LsrAdaptError(f"data.label_names={names} has {len(names)} names but data.num_labels="
                                f"{data['num_labels']}; give one name per label")
        if len(set(map(str, names))) != len(names):
            raise LsrAdaptError(f"data.label_names={names} names a label twice")
