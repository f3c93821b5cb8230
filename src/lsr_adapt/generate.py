"""Generate text with a fine-tuned causal LM run (``data.task_type: causal_lm``).

    python -m lsr_adapt.generate --run RUN_DIR --prompt "Once upon a time" [--max-new-tokens 40]
        [--merged] [--no-adapter] [--temperature 0.8 --top-p 0.95 --seed 0] [--base PATH]

The base model is loaded from where the run loaded it (``--base`` overrides), the run's adapter is
installed with ``artifacts.load_adapter`` (same safety checks as predict: the base weights'
fingerprint, names and shapes). ``--merged`` folds ΔW into the base weights first (inference at the
base model's cost, same output); ``--no-adapter`` generates with the base model alone, for
comparison. Greedy decoding unless ``--temperature`` > 0.
"""

from __future__ import annotations

import math

import torch

from .adapters import merge_adapters, unmerge_adapters
from .artifacts import LoadedRun, load_run, saved_run
from .cli import ArgumentParser, add_run_loading_args, exit_on_user_error, quiet_hf, run_loading_kwargs
from .errors import LsrAdaptError
from .modeling import local_config, position_limit


def load_lm_run(run_dir, *, base: str | None = None, check_fingerprint: bool = True, check_checksum: bool = True,
                device: str | None = None, adapter: bool = True) -> LoadedRun:
    """A saved causal-LM run rebuilt for generation (``artifacts.load_run``), refusing other task types."""
    _, adapter_config, _, _ = saved_run(run_dir, base)
    task_type = adapter_config.get("task_type")
    if task_type != "causal_lm":
        raise LsrAdaptError(f"{run_dir}: a {task_type or 'classification'} run, not a causal_lm one; "
                            f"use python -m lsr_adapt.predict for it")
    return load_run(run_dir, base=base, check_fingerprint=check_fingerprint, check_checksum=check_checksum,
                    device=device, adapter=adapter)


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """The prompt as a document prefix: the tokenizer's own BOS, no closing EOS (the tiny smoke
    tokenizer frames every text with both; training documents end with EOS, so a prompt must not)."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    while ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id and len(ids) > 1:
        ids = ids[:-1]
    return torch.tensor([ids])


@torch.no_grad()
def generate(run: LoadedRun, prompt: str, max_new_tokens: int = 40, merged: bool = False,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> str:
    """The prompt's continuation (new tokens only, decoded without special tokens)."""
    check_sampling(max_new_tokens, temperature, top_p, seed)
    model, tok = run.model, run.tokenizer
    device = next(model.parameters()).device
    ids = prompt_ids(tok, prompt).to(device)
    if ids.shape[1] == 0:
        raise LsrAdaptError(f"--prompt {prompt!r}: gives no tokens (and the tokenizer adds no BOS); give some text")
    limit = generation_limit(model.config)
    if limit is not None and ids.shape[1] + max_new_tokens > limit:
        raise LsrAdaptError(f"--max-new-tokens {max_new_tokens}: the prompt's {ids.shape[1]} tokens plus "
                            f"{max_new_tokens} new ones exceed the model's {limit} positions; use "
                            f"--max-new-tokens {max(limit - ids.shape[1], 0)} or less"
                            + (" (or a shorter prompt)" if ids.shape[1] >= limit else ""))
    sample = temperature > 0
    kwargs = dict(do_sample=sample, temperature=temperature, top_p=top_p) if sample else dict(do_sample=False)
    torch.manual_seed(seed)
    if merged:
        merge_adapters(model)
    try:
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kwargs)
    finally:
        if merged:
            unmerge_adapters(model)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def generation_limit(config) -> int | None:
    """The most positions a generation may fill: the learned position table (``position_limit``), or
    for rotary positions the context the model was trained for (beyond it RoPE runs, but untested)."""
    limit = position_limit(config)
    if limit is None:
        n = getattr(config, "max_position_embeddings", None)
        limit = n if isinstance(n, int) and n > 0 else None
    return limit


MAX_SEED = 2**32  # numpy's and CUDA's generators take seeds below this


def check_sampling(max_new_tokens: int, temperature: float, top_p: float, seed: int = 0) -> None:
    """The decoding options, each one line naming the value and what is allowed (nan is not a number
    in range: every comparison with it is false, so the checks are written to fail for it)."""
    if not max_new_tokens >= 1:
        raise LsrAdaptError(f"--max-new-tokens {max_new_tokens}: must be an integer >= 1")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise LsrAdaptError(f"--temperature {temperature}: must be a finite number >= 0 (0 = greedy)")
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise LsrAdaptError(f"--top-p {top_p}: must be a number in (0, 1]")
    if top_p != 1 and temperature == 0:
        raise LsrAdaptError(f"--top-p {top_p}: applies to sampling only; set --temperature > 0 too (0 = greedy)")
    if not 0 <= seed < MAX_SEED:
        raise LsrAdaptError(f"--seed {seed}: must be an integer in [0, 2**32)")


def run_cli(args) -> None:
    check_sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    if args.merged and args.no_adapter:
        raise LsrAdaptError("--merged and --no-adapter exclude each other (--no-adapter: the base model alone)")
    base = saved_run(args.run, args.base)[3]
    config = local_config(base)  # the position limit from config.json, before the weights load
    limit = None if config is None else generation_limit(config)
    if limit is not None and args.max_new_tokens >= limit:
        raise LsrAdaptError(f"--max-new-tokens {args.max_new_tokens}: the model takes {limit} positions in all, "
                            f"prompt included; use fewer")
    run = load_lm_run(args.run, **run_loading_kwargs(args), device=args.device, adapter=not args.no_adapter)
    for prompt in args.prompt:
        text = generate(run, prompt, args.max_new_tokens, merged=args.merged, temperature=args.temperature,
                        top_p=args.top_p, seed=args.seed)
        print(prompt + (text if text[:1].isspace() or not text else " " + text), flush=True)


def main(argv=None) -> None:
    p = ArgumentParser(prog="python -m lsr_adapt.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a causal_lm run directory")
    p.add_argument("--prompt", required=True, action="append", help="text to continue (repeat for several)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--merged", action="store_true", help="merge the adapter into the base weights first")
    p.add_argument("--no-adapter", action="store_true", help="the base model alone, for comparison")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_run_loading_args(p)
    args = p.parse_args(argv)
    quiet_hf()
    exit_on_user_error(run_cli, args)


if __name__ == "__main__":
    main()
