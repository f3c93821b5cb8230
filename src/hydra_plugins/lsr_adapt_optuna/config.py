"""``hydra/sweeper: lsr_optuna``: the sweeper's settings (defaults; conf/hparams_search/optuna.yaml sets them)."""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class LsrOptunaSweeperConf:
    _target_: str = "hydra_plugins.lsr_adapt_optuna.sweeper.LsrOptunaSweeper"
    # sampler and pruner reach the sweeper as configs: lsr_adapt.hpo instantiates them, so a bad one
    # is one error line naming it
    _recursive_: bool = False
    # trials this process runs (a rerun of the same command, or another worker, adds its own)
    n_trials: int = 20
    # trials asked for and launched together (in parallel with a parallel launcher)
    n_jobs: int = 1
    # null: the SQLite file <sweep dir>/optuna.db; else any SQLAlchemy URL (optuna RDB storage)
    storage: Optional[str] = None  # noqa: UP045 - OmegaConf reads these annotations
    # null: the sweep dir's name
    study_name: Optional[str] = None  # noqa: UP045
    # instantiated with hydra.utils.instantiate: any optuna sampler / pruner (null pruner: none)
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner",
                                                 "n_startup_trials": 2, "n_warmup_steps": 1})
    # the shared search space in Hydra sweep syntax; each method adds hparams_search.spaces.<method>
    params: Any = None


ConfigStore.instance().store(group="hydra/sweeper", name="lsr_optuna", node=LsrOptunaSweeperConf,
                             provider="lsr_adapt")
