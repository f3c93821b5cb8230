"""The Hydra ``Sweeper`` that runs an Optuna study of main.py jobs (see ``lsr_adapt.hpo``)."""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LsrOptunaSweeper(Sweeper):
    def __init__(self, n_trials: int, n_jobs: int, storage: Any, study_name: Any, sampler: Any, pruner: Any,
                 params: Any) -> None:
        self.settings = {"n_trials": n_trials, "n_jobs": n_jobs, "storage": storage, "study_name": study_name,
                         "sampler": sampler, "pruner": pruner, "params": params}
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> Any:
        from lsr_adapt.cli import exit_on_user_error
        from lsr_adapt.hpo import run_study

        return exit_on_user_error(run_study, config=self.config, launcher=self.launcher, arguments=arguments,
                                  **self.settings)
