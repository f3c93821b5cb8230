"""The training application: ``lsr-adapt train ...`` installed, ``python main.py ...`` in a checkout.

One Hydra app over the configs shipped inside the package (``lsr_adapt/conf``; a checkout's
``conf/`` is the same directory). A user's own configs join them from ``./conf`` of the directory
the command runs in (Hydra's config search path, ahead of the packaged ones): a file there adds an
option (``conf/experiment/mine.yaml`` → ``experiment=mine``) or replaces the packaged one of the
same name; ``lsr-adapt cp experiment/demo`` starts one from a packaged config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .cli import check_output_dirs, exit_on_user_error, flags_first, open_section_overrides
from .config_schema import validate_config
from .distributed import hydra_overrides_for_rank, share_run_stamp
from .sweep_status import run_job
from .training.rundir import refusal, register_resolvers

CONF_DIR = Path(__file__).resolve().parent / "conf"
USER_CONF = "conf"  # below the working directory: the user's configs, searched first

register_resolvers()  # Hydra's own files stay out of a finished or busy run dir (conf/config.yaml)


# an absolute path: Hydra reads a module's relative config_path as a Python package (lsr_adapt.conf)
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    # the best validation metric, so a Hydra sweeper (Optuna) can optimise it. A failed job of a
    # --multirun returns None (its failed.json holds the error; Optuna counts a failed trial) and the
    # sweep goes on; a single run's user error is one `error:` line and exit status 2.
    # (a job refused a finished or busy run dir writes nothing there: `refusal`)
    results = exit_on_user_error(run_job, validate_then_train, cfg, refusal=refusal)
    return None if results is None else results["best_metric"]


def validate_then_train(cfg: DictConfig) -> dict:
    validate_config(cfg)  # bad input answered before the Trainer stack imports (seconds)
    from .training import train

    return train(cfg)


def user_config_dir(argv: list[str], cwd: Path | None = None) -> list[str]:
    """``--config-dir ./conf`` when the working directory has one of its own (and none was given)."""
    user = (cwd or Path.cwd()) / USER_CONF
    if any(a in ("--config-dir", "-cd") or a.startswith("--config-dir=") for a in argv):
        return argv
    if user.is_dir() and user.resolve() != CONF_DIR:
        return ["--config-dir", str(user), *argv]
    return argv


def train_main(argv: list[str] | None = None) -> None:
    """``lsr-adapt train [group=option ...] [key=value ...] [--multirun ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    share_run_stamp()  # torchrun / accelerate launch: one run dir for every rank
    argv = user_config_dir(hydra_overrides_for_rank(open_section_overrides(flags_first(argv))))
    check_output_dirs(argv)
    sys.argv = [sys.argv[0], *argv]  # Hydra reads its command line from sys.argv
    hydra_main()
