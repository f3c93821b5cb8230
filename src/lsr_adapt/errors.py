"""User-facing errors: raised for bad input, printed as one line by the CLI entry points."""


class LsrAdaptError(Exception):
    """A problem with the user's input (config value, file, model/adapter mismatch).

    Entry points catch it and print ``error: <message>`` without a traceback, so every message
    must name the bad value and, where there is a finite set, the valid choices.

    A bad value of one named field (``bad_value``) also keeps ``key``, ``value`` and ``allowed``,
    so a caller that knows where the value came from can name its full key (``config_schema``
    turns ``LoRAConfig.r=0: ...`` into ``model.lora.r=0: ...``); None on every other error.
    """

    key: str | None = None
    value: object = None
    allowed: str | None = None


class RunDirRefused(LsrAdaptError):
    """The run dir belongs to another run (finished, in use, or holding checkpoints of another config):
    the command stops and writes nothing there, not even its failure record."""


def show_value(value) -> str:
    """A config value as the YAML user wrote it: strings quoted, ``null``, ``true`` / ``false``."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def bad_value(key: str, value, allowed: str, owner: str = "") -> LsrAdaptError:
    """``<owner>.<key>=<value>: <allowed>`` (``; `` before "valid choices: ..."), e.g.
    ``LoRAConfig.r=0: must be an integer >= 1``, with ``key``, ``value`` and ``allowed`` kept."""
    sep = "; " if allowed.startswith("valid") else ": "
    err = LsrAdaptError(f"{owner + '.' if owner else ''}{key}={show_value(value)}{sep}{allowed}")
    err.key, err.value, err.allowed = key, value, allowed
    return err


def choices_error(what: str, value, choices) -> LsrAdaptError:
    return LsrAdaptError(f"unknown {what} {value!r}; valid choices: {', '.join(map(str, sorted(choices)))}")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
