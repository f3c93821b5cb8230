"""Validate once, then use what was validated: ``validate_config`` returns the config's sections
(``config_schema.RunConfig``), and each phase of ``train`` works from its own section alone."""

from __future__ import annotations

import pytest
import torch
from helpers import compose
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from lsr_adapt.config_schema import RunConfig, RunSection, validate_config


def test_validate_config_returns_the_sections_it_checked(tmp_path):
    cfg = compose("experiment=smoke", "training.learning_rate=0.003", f"output_dir={tmp_path}")
    sections = validate_config(cfg)
    assert isinstance(sections, RunConfig)
    assert sections.training.learning_rate == cfg.training.learning_rate == 0.003
    for name in ("model", "data", "training", "budget", "logger"):  # every value as composed, interpolations resolved
        assert (OmegaConf.to_container(getattr(sections, name), resolve=True)
                == OmegaConf.to_container(cfg[name], resolve=True)), name
    assert sections.run == RunSection(output_dir=str(tmp_path), init_from=cfg.init_from,
                                      init_from_checksum=cfg.init_from_checksum, freeze_adapter=cfg.freeze_adapter)


def test_sections_are_read_only_and_apart_from_the_callers_config():
    cfg = compose("experiment=smoke", "training.learning_rate=0.003")
    sections = validate_config(cfg)
    with pytest.raises(ReadonlyConfigError):
        sections.training.learning_rate = 1.0
    cfg.training.learning_rate = 0.5  # the caller's config stays writable, and changing it changes no section
    assert sections.training.learning_rate == 0.003
    assert not OmegaConf.is_readonly(cfg)


def test_training_arguments_from_the_training_section_alone(tmp_path):
    from lsr_adapt.training.arguments import precision_of, training_arguments

    sections = validate_config(compose("experiment=smoke", "training.learning_rate=0.003", "training.seed=7",
                                       "+training.args={optim: adafactor}"))
    args = training_arguments(sections.training, sections.data.metric, tmp_path, torch.nn.Linear(2, 2),
                              precision_of("fp32"), "none", {})
    assert args.learning_rate == 0.003 and args.seed == args.data_seed == 7
    assert args.per_device_train_batch_size == sections.training.batch_size
    assert args.metric_for_best_model == sections.data.metric
    assert str(args.optim.value if hasattr(args.optim, "value") else args.optim) == "adafactor"  # training.args, applied last
