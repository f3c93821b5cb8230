"""Entry point: ``python main.py [group=option ...] [key=value ...] [--multirun ...]``."""

import sys

import hydra
from omegaconf import DictConfig

from lsr_adapt.cli import check_output_dirs, exit_on_user_error, flags_first, open_section_overrides
from lsr_adapt.config_schema import validate_config
from lsr_adapt.distributed import hydra_overrides_for_rank, share_run_stamp
from lsr_adapt.sweep_status import run_job
from lsr_adapt.training.rundir import refusal, register_resolvers

register_resolvers()  # Hydra's own files stay out of a finished or busy run dir (conf/config.yaml)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # the best validation metric, so a Hydra sweeper (Optuna) can optimise it. A failed job of a
    # --multirun returns None (its failed.json holds the error; Optuna counts a failed trial) and the
    # sweep goes on; a single run's user error is one `error:` line and exit status 2.
    # (a job refused a finished or busy run dir writes nothing there: `refusal`)
    results = exit_on_user_error(run_job, validate_then_train, cfg, refusal=refusal)
    return None if results is None else results["best_metric"]


def validate_then_train(cfg: DictConfig) -> dict:
    validate_config(cfg)  # bad input answered before the Trainer stack imports (seconds)
    from lsr_adapt.training import train

    return train(cfg)


if __name__ == "__main__":
    share_run_stamp()  # torchrun / accelerate launch: one run dir for every rank
    sys.argv[1:] = hydra_overrides_for_rank(open_section_overrides(flags_first(sys.argv[1:])))
    check_output_dirs(sys.argv[1:])
    main()
