"""Optuna sweeper hook: search the selected method's own hyperparameters.

``hydra.sweeper.params`` is one fixed search space for every job, but the hyperparameters live
under ``model.<adaptation_type>`` (``model.lora.r`` does not exist when ``model=roberta_lsr``).
``conf/hparams_search/optuna.yaml`` therefore keeps one space per method under
``hparams_search.spaces.<adaptation_type>`` and names :func:`method_search_space` as the
sweeper's ``custom_search_space``: the sweeper calls it for every trial with the composed config,
and the values it suggests become that trial's overrides, next to the shared ones (learning rate).
"""

from __future__ import annotations

from .errors import LsrAdaptError


def method_space(cfg) -> dict:
    """The Optuna distributions for ``cfg.model.adaptation_type``, parsed from Hydra sweep syntax."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from omegaconf import OmegaConf

    method = str(cfg.model.adaptation_type)
    spaces = OmegaConf.select(cfg, "hparams_search.spaces")
    if spaces is None or method not in spaces:
        known = sorted(spaces) if spaces is not None else []
        raise LsrAdaptError(
            f"no search space for adaptation_type {method!r} in hparams_search.spaces; defined for: "
            f"{', '.join(known) or 'none'} (add hparams_search.spaces.{method} to conf/hparams_search/optuna.yaml)"
        )
    overrides = [f"{k}={v}" for k, v in spaces[method].items()]
    distributions, fixed = create_params_from_overrides(overrides)
    if fixed:
        raise LsrAdaptError(
            f"hparams_search.spaces.{method} entries must be sweeps (choice(...), range(...), interval(...)); "
            f"fixed values {fixed} belong in the model config or on the command line"
        )
    return distributions


def method_search_space(cfg, trial) -> None:
    """``custom_search_space`` for hydra-optuna-sweeper: suggest this method's values for ``trial``."""
    for name, distribution in method_space(cfg).items():
        # the sweeper itself suggests its params this way (optuna<3, pinned by the plugin)
        trial._suggest(name, distribution)
