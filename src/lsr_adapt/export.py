"""Export a saved run: ``python -m lsr_adapt.export --run RUN_DIR --format FORMAT --out DIR``.

Formats (see docs/artifacts.md):

* ``merged``: ΔW folded into the base weights; a plain HF model directory (weights, config,
  tokenizer) that ``AutoModelForSequenceClassification.from_pretrained`` loads without lsr-adapt.
  Exact (up to fp32 rounding of W + ΔW) for every method.
* ``peft``: peft LoRA files (``PeftModel.from_pretrained(base, DIR)``); exact for LoRA, rsLoRA, DoRA.
* ``lokr``: peft LoKr files; exact for single-term LSR (num_terms = 1).
* ``lora``: any method's ΔW truncated to rank ``--rank`` by SVD, as peft LoRA files; the relative
  Frobenius error is printed and written to ``export_report.json``. Without ``--rank``, the exact
  rank of the method's ΔW (LSR: t·r²; LoRA: r), so the export is exact up to fp32 rounding.

The output directory is built beside ``--out`` and renamed into place: there is never half of one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .adapters import adapter_layers, merge_and_unload, replace_modules
from .adapters.qlora import dequantize
from .artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_run, saved_run
from .artifacts.peft_format import exact_lora_rank, peft_lokr, peft_lora, svd_lora
from .cli import ArgumentParser, add_run_loading_args, exit_on_user_error, quiet_hf, run_loading_kwargs
from .errors import LsrAdaptError, choices_error
from .iofiles import publish_dir, write_json
from .outpaths import check_output_dir

log = logging.getLogger(__name__)

FORMATS = ("merged", "peft", "lokr", "lora")
REPORT = "export_report.json"
_PROBE_TEXTS = ["the quick brown fox", "jumps over the lazy dog again"]


def _probe_logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(_PROBE_TEXTS, padding=True, return_tensors="pt")
    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    with torch.no_grad():
        return model(**batch).logits.float().cpu()


def _is_4bit(module) -> bool:
    return getattr(getattr(module, "weight", None), "quant_state", None) is not None


def _linear(weight: torch.Tensor, bias) -> torch.nn.Linear:
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    out.weight.data = weight.detach().float().contiguous()
    if bias is not None:
        out.bias.data = bias.detach().float().clone()
    return out


@torch.no_grad()
def merged_plain_model(model):
    """W₀ + ΔW folded into every adapted layer, adapter code removed: a stock transformers model.

    A 4-bit (QLoRA) base is dequantized first, so the export holds W = dequant(W₀) + ΔW in fp32,
    the weight the live QLoRA model computes with, instead of re-quantizing the sum.
    """
    for name, layer in list(adapter_layers(model).items()):
        if _is_4bit(layer.base_layer):
            layer.unmerge()
            w = layer.base_weight().float() + layer.delta_weight().float()
            replace_modules(model, [name], lambda m, _n, w=w: _linear(w, m.base_layer.bias))
    merge_and_unload(model)
    quantized = [n for n, m in model.named_modules() if _is_4bit(m)]
    if quantized:
        replace_modules(model, quantized, lambda m, _n: _linear(dequantize(m.weight), m.bias))
    return model


def export(run_dir, fmt: str, out, rank: int | None = None, *, overwrite: bool = False, base: str | None = None,
           check_fingerprint: bool = True, check_checksum: bool = True) -> dict:
    """Write ``run_dir``'s adapter to ``out`` in ``fmt``; returns the report also saved as export_report.json."""
    if fmt not in FORMATS:
        raise choices_error("export format", fmt, FORMATS)
    if rank is not None and fmt != "lora":
        raise LsrAdaptError(f"--rank applies to --format lora only, not {fmt!r}")
    if rank is not None and rank < 1:
        raise LsrAdaptError(f"--rank {rank}: must be an integer >= 1")
    out = Path(out)
    # never into or over the run exported (nor any finished run), never replacing what export did not write
    check_output_dir(out, "--out", sources=[run_dir], overwrite=overwrite, replaceable=REPORT)
    if out.exists() and not overwrite:
        raise LsrAdaptError(f"{out}: already exists; choose another output directory or pass --overwrite")
    if fmt != "merged" and saved_run(run_dir, base)[1].get("pooling") == "mean":  # before any model loads
        # peft rebuilds the stock transformers head, which reads the first token: not this run's model
        raise LsrAdaptError(f"{run_dir}: this run's head reads the mean of the last hidden states "
                            f"(model.pooling=mean), which a peft adapter cannot express; use --format merged")
    run = load_run(run_dir, base=base, check_fingerprint=check_fingerprint, check_checksum=check_checksum)
    meta = run.adapter_config
    report = {"format": fmt, "source": str(run_dir), "adaptation_type": meta.get("adaptation_type"),
              "method_config": meta.get("method_config"), "base_model": meta.get("base_model")}

    if fmt == "merged":
        live = _probe_logits(run.model, run.tokenizer)
        model = merged_plain_model(run.model)
        diff = (_probe_logits(model, run.tokenizer) - live).abs().max().item()
        report.update(exact=True, probe_max_abs_logit_diff=diff)

        def build(tmp: Path):
            model.save_pretrained(tmp)
            run.tokenizer.save_pretrained(tmp)
            write_json(tmp / REPORT, report)
    else:
        from safetensors.torch import save

        if fmt == "peft":
            config, tensors = peft_lora(run.model, meta)
            report.update(exact=True)
        elif fmt == "lokr":
            config, tensors = peft_lokr(run.model, meta)
            report.update(exact=True)
        else:
            if rank is None:  # the exact rank (LSR: t·r²); summary() says so
                exact_rank, how = exact_lora_rank(run.model)
                rank = exact_rank
            else:
                try:
                    exact_rank, how = exact_lora_rank(run.model)
                except LsrAdaptError:  # no low-rank bound (DoRA): any --rank approximates
                    exact_rank, how = None, None
            config, tensors, svd = svd_lora(run.model, meta, int(rank))
            # "exact" stays False: even at the exact rank the factors are float32-rounded SVD factors
            report.update(exact=False, exact_rank=exact_rank, exact_rank_formula=how, **svd)
        data = save(tensors, metadata={"format": "pt"})

        def build(tmp: Path):
            write_json(tmp / ADAPTER_CONFIG, config)
            (tmp / ADAPTER_WEIGHTS).write_bytes(data)
            write_json(tmp / REPORT, report)

    publish_dir(build, out, if_exists="replace" if overwrite else "error")
    return report


def summary(report: dict, out) -> str:
    line = f"exported {report['adaptation_type']} adapter as {report['format']} to {out}"
    if report["format"] == "lora":  # its rank against the exact one, and the error either way
        exact = report.get("exact_rank")
        if exact is not None and report["rank"] >= exact:
            rank = f"rank {report['rank']} SVD = the exact rank of its ΔW, {report['exact_rank_formula']}"
        elif exact is not None:
            rank = (f"rank {report['rank']} SVD, below the exact rank {exact} ({report['exact_rank_formula']}; "
                    f"omit --rank for it)")
        else:
            rank = f"rank {report['rank']} SVD"
        return (f"{line} ({rank}: relative Frobenius error {report['relative_error']:.3e} overall, "
                f"{report['max_layer_relative_error']:.3e} worst layer; per layer in {Path(out) / REPORT})")
    extra = ""
    if "probe_max_abs_logit_diff" in report:
        extra = f"; merged vs live max |Δlogit| on a probe batch {report['probe_max_abs_logit_diff']:.2e}"
    return f"{line} (exact{extra})"


def main(argv=None) -> None:
    p = ArgumentParser(prog="python -m lsr_adapt.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory (or adapter directory) to export")
    p.add_argument("--format", required=True, dest="fmt", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--rank", type=int, default=None,
                   help="rank of the SVD LoRA (--format lora; default: the exact rank of the method's ΔW, LSR t·r²)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_run_loading_args(p, device=False)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    quiet_hf()
    report = exit_on_user_error(export, args.run, args.fmt, args.out, args.rank, overwrite=args.overwrite,
                                **run_loading_kwargs(args))
    print(json.dumps(report, indent=2) if args.json else summary(report, args.out))


if __name__ == "__main__":
    main()
