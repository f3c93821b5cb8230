"""Fail fast, with what to do offline, when a model or dataset must come from an unreachable hub.

Without this, ``from_pretrained`` / ``load_dataset`` spend about a minute in retries before saying
they cannot connect. ``require_hub(name, what)`` is called just before them:

* a local path (or ``HF_HUB_OFFLINE=1``, or ``LSR_ADAPT_HUB_CHECK=0``): nothing to check;
* else the hub endpoint (``HF_ENDPOINT``, or the proxy that serves it) is probed once per process
  with a TCP connect of at most ``TIMEOUT_S`` seconds, and when it cannot be reached the run stops
  at once with one line saying how to run offline.

``hub_error(name, what, exc)`` turns the failure of a load under ``HF_HUB_OFFLINE=1`` (a name that is
not in the local cache) into the same line. ``check_hub_id(name, key)`` refuses, before anything
loads, a hub id that today's libraries no longer accept: huggingface_hub >= 1.x resolves repo files
through ``hf://`` paths that must be ``namespace/name`` (``glue`` fails deep inside ``datasets`` with
``HfUriError``), so a single-segment id is one line naming its canonical form. Bottom layer: imports only ``errors``, the standard
library and huggingface_hub.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from .errors import LsrAdaptError, first_line

log = logging.getLogger(__name__)

TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}
_probed: dict[tuple[str, int], str | None] = {}  # (host, port) -> None if reachable, else why not
_lock = threading.Lock()

OFFLINE_HELP = ("to run offline: HF_HUB_OFFLINE=1 with a local model.name_or_path=/path/to/checkpoint and "
                "data.path=/path/to/data (or copies already in the Hugging Face cache), or experiment=smoke, "
                "or the offline demo: python -m lsr_adapt.assets fetch && python main.py experiment=demo")


def endpoint() -> str:
    """The hub URL huggingface_hub uses (``HF_ENDPOINT``, read when it was imported)."""
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover - a dependency of transformers and datasets
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline_mode() -> bool:
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:  # pragma: no cover
        pass
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                                          "HF_DATASETS_OFFLINE"))


def is_local(name_or_path: str) -> bool:
    return Path(str(name_or_path)).expanduser().exists()


def _address(url: str) -> tuple[str, int] | None:
    """(host, port) a request to ``url`` connects to: the proxy's when one is configured for it."""
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            return p.hostname, p.port or (443 if p.scheme == "https" else 80)
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _connect(address: tuple[str, int], timeout: float) -> str | None:
    """None when a TCP connection to ``address`` opens within ``timeout`` s (name lookup included),
    else the reason it did not."""
    result: list[str | None] = []

    def attempt():
        try:
            with socket.create_connection(address, timeout=timeout):
                result.append(None)
        except OSError as e:
            result.append(e.strerror or type(e).__name__)

    thread = threading.Thread(target=attempt, daemon=True)  # a name lookup ignores socket timeouts
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"no answer within {timeout:g} s"


def hub_unreachable(timeout: float = TIMEOUT_S) -> str | None:
    """None when the hub endpoint accepts a connection, else why not (probed once per process)."""
    address = _address(endpoint())
    if address is None:
        return None
    with _lock:
        if address not in _probed:
            _probed[address] = _connect(address, timeout)
        return _probed[address]


# Single-segment ids the hub moved under an organisation (the hub's own redirects), for the error line.
KNOWN_RENAMES = {
    # datasets
    "glue": "nyu-mll/glue", "imdb": "stanfordnlp/imdb", "wikitext": "Salesforce/wikitext",
    "super_glue": "aps/super_glue", "squad": "rajpurkar/squad", "sst2": "stanfordnlp/sst2",
    "ag_news": "fancyzhx/ag_news", "rotten_tomatoes": "cornell-movie-review-data/rotten_tomatoes",
    # models
    "roberta-base": "FacebookAI/roberta-base", "roberta-large": "FacebookAI/roberta-large",
    "bert-base-uncased": "google-bert/bert-base-uncased", "bert-base-cased": "google-bert/bert-base-cased",
    "bert-large-uncased": "google-bert/bert-large-uncased",
    "distilbert-base-uncased": "distilbert/distilbert-base-uncased",
    "distilbert-base-uncased-finetuned-sst-2-english": "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
    "gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2", "t5-small": "google-t5/t5-small", "t5-base": "google-t5/t5-base",
    "whisper-small": "openai/whisper-small", "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "SmolLM2-135M": "HuggingFaceTB/SmolLM2-135M", "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


# files a name may point at directly (a GGUF checkpoint, a data file): their loaders report a missing one
FILE_SUFFIXES = {".gguf", ".safetensors", ".bin", ".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt"}


def check_hub_id(name: str, key: str, repo_type: str = "model") -> None:
    """Raise ``LsrAdaptError`` (one line naming ``key``) when ``name`` is neither a local path nor a
    hub id huggingface_hub accepts (``parse_hf_uri``: ``namespace/name``; ``validate_repo_id``)."""
    name = str(name)
    if is_local(name) or name.startswith(("/", ".", "~")) or Path(name).suffix.lower() in FILE_SUFFIXES:
        return  # a path: its loader says when it is missing
    if "/" not in name:
        known = KNOWN_RENAMES.get(name)
        hint = f"use {key}={known}" if known else (f"give the hub id as namespace/name (e.g. {key}=org/{name}) "
                                                   f"or a local path")
        raise LsrAdaptError(f"{key}={name!r}: a single-segment hub id, which the Hugging Face libraries no "
                            f"longer accept (ids must be 'namespace/name'); {hint}")
    from huggingface_hub.utils import parse_hf_uri, validate_repo_id

    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    try:
        validate_repo_id(name)
        parsed = parse_hf_uri(f"hf://{prefix}{name}")
    except ValueError as e:  # HFValidationError, HfUriError
        raise LsrAdaptError(f"{key}={name!r}: no such local path, and not a hub id ({first_line(e)}); give "
                            f"an existing path or a hub id namespace/name") from None
    if parsed.id != name or parsed.revision or parsed.path_in_repo:  # pragma: no cover - validate_repo_id's job
        raise LsrAdaptError(f"{key}={name!r}: no such local path, and not a hub id namespace/name")


def _describe(what: str, name: str) -> str:
    return f"{what} {name!r}"


def offline_error(name_or_path: str, what: str, reason: str) -> LsrAdaptError:
    return LsrAdaptError(f"cannot load {_describe(what, name_or_path)}: {reason}; {OFFLINE_HELP}")


def require_hub(name_or_path: str, what: str = "model") -> None:
    """Raise ``LsrAdaptError`` at once when ``name_or_path`` must be downloaded and the hub cannot be
    reached; ``what`` names the thing in the message (model, tokenizer, dataset)."""
    if is_local(name_or_path) or offline_mode() or os.environ.get("LSR_ADAPT_HUB_CHECK", "1").strip() == "0":
        return
    why = hub_unreachable()
    if why is not None:
        raise offline_error(name_or_path, what, f"the Hugging Face Hub ({endpoint()}) cannot be reached ({why})")


def hub_error(name_or_path: str, what: str, exc: BaseException) -> LsrAdaptError | None:
    """The offline line for a failed load of a hub name in offline mode (not in the local cache);
    None when the failure is something else (then the caller reports it as before)."""
    if is_local(name_or_path) or not offline_mode():
        return None
    text = first_line(exc)
    log.debug("offline load of %s failed: %s", name_or_path, text)
    return offline_error(name_or_path, what, "offline mode (HF_HUB_OFFLINE=1) and it is not in the local "
                                             "Hugging Face cache")
