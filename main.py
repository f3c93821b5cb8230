"""Entry point: ``python main.py [group=option ...] [key=value ...] [--multirun ...]``."""

import sys

import hydra
from omegaconf import DictConfig

from lsr_adapt.cli import exit_on_user_error, flags_first
from lsr_adapt.distributed import hydra_overrides_for_rank, share_run_stamp
from lsr_adapt.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    # the best validation metric, so a Hydra sweeper (Optuna) can optimise it
    return exit_on_user_error(train, cfg)["best_metric"]


if __name__ == "__main__":
    share_run_stamp()  # torchrun / accelerate launch: one run dir for every rank
    sys.argv[1:] = hydra_overrides_for_rank(flags_first(sys.argv[1:]))
    main()
