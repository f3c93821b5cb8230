"""Compare runs: ``python -m lsr_adapt.report SWEEP_OR_RUN_DIR [more dirs] [--out DIR]``.

Reads every ``results.json`` below the given directories (written by ``training.train``) and writes, into
``--out`` (default: the first directory, a sweep dir; for a finished run dir, which is never changed,
``RUN_DIR-report/`` beside it):

* ``report.md`` and ``report.csv``: one row per configuration, that is everything but the seed
  (task, base model, method, method hyperparameters, learning rate, batch size, epochs, precision,
  device), with the adapter / head / total trainable parameters and % of the model, the best
  validation metric as mean ± sample standard deviation (n − 1) over the seeds with n, the metric
  before training, and the means of train time, examples/s and peak memory;
* per task (and metric) PNG plots: ``curves_<task>.png`` (validation metric vs epoch and vs
  wall-clock training time, mean over seeds with a min–max band), ``frontier_<task>.png`` (the
  metric vs **adapter** parameters, log x, one point per configuration with ± std error bars, each
  method's Pareto line, head-only / full fine-tuning as horizontal levels), ``frontier_trainable_<task>.png``
  (the same vs adapter + head) and ``memory_<task>.png`` (peak memory per configuration);
* per task, a matched-budget table (report.md; ``matched_budget_*`` columns of the LoRA rows in
  report.csv): each LoRA configuration against the LSR one closest in adapter parameters, LSR − LoRA
  with a 95% Welch t interval over the seeds and a verdict (better / tie / worse). Frontier and table
  use the test split when every run has test labels, else the best validation metric, and say which.

Jobs that did not finish are listed, not fatal: a Hydra job directory (one holding ``.hydra/``)
without ``results.json``, a ``results.json`` whose ``status`` is not ``completed``, or one that
cannot be read. Every output is written atomically (``iofiles.atomic_path``).
"""

from __future__ import annotations

from .build import build_report, output_dir

__all__ = ["build_report", "output_dir"]
