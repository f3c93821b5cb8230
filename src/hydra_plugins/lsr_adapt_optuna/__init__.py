"""lsr-adapt's Optuna sweeper for Hydra (``hydra/sweeper: lsr_optuna``); the logic is ``lsr_adapt.hpo``.

``hydra_plugins`` is a namespace package (no ``__init__.py``): Hydra imports every module below it
at start-up and registers the ``Sweeper`` subclasses it finds and the configs they store, the way
hydra-optuna-sweeper and Hydra's own example plugins are found. Kept light: optuna is imported
only when a sweep runs.
"""
