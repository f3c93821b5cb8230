"""User-facing errors: raised for bad input, printed as one line by the CLI entry points."""


class LsrAdaptError(Exception):
    """A problem with the user's input (config value, file, model/adapter mismatch).

    Entry points catch it and print ``error: <message>`` without a traceback, so every message
    must name the bad value and, where there is a finite set, the valid choices.
    """


class RunDirRefused(LsrAdaptError):
    """The run dir belongs to another run (finished, in use, or holding checkpoints of another config):
    the command stops and writes nothing there, not even its failure record."""


def choices_error(what: str, value, choices) -> LsrAdaptError:
    return LsrAdaptError(f"unknown {what} {value!r}; valid choices: {', '.join(map(str, sorted(choices)))}")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
