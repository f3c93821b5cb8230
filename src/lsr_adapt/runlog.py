"""A run dir's ``main.log``, written only once the run owns that dir.

Hydra opens the job's log file before the task function starts, so a command that is then refused
(the dir is another run's: finished, in use, or holding checkpoints of another config) used to leave
its lines in that run's log. ``RunLogHandler`` (``conf/hydra/job_logging/guarded.yaml``) holds the
records in memory until ``start(run_dir)`` says the run owns its dir (``training.rundir.start_records``),
then writes them and everything after; a process that never gets there writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from pathlib import Path

_handlers: weakref.WeakSet = weakref.WeakSet()
_HELD = 10_000  # records kept while waiting (a run logs far fewer before it starts)


class RunLogHandler(logging.FileHandler):
    def __init__(self, filename, mode: str = "a", encoding: str | None = None, delay: bool = True):
        super().__init__(filename, mode, encoding, delay=True)  # the file is opened by the first write
        self.started = False
        self._held: list[logging.LogRecord] = []
        _handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.started:
            super().emit(record)
        elif len(self._held) < _HELD:
            self._held.append(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # a log line that cannot be written (a full disk, a read-only dir) must not print logging's
        # traceback over the run's own one-line error, which says what happened to the dir
        stream, self.stream = self.stream, None  # reopened by the next write, if the disk has room again
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()

    def start(self) -> None:
        self.started = True
        held, self._held = self._held, []
        for record in held:
            super().emit(record)


def start(run_dir) -> None:
    """The run owns ``run_dir``: its log handlers write what they held, and from now on."""
    run_dir = Path(run_dir).resolve()
    for handler in list(_handlers):
        if Path(handler.baseFilename).parent == run_dir and not handler.started:
            handler.start()
