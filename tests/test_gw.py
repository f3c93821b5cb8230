"""Gravitational-wave detection (issue 4): the synthetic strain generator, the Whisper detector, metrics.

Independent references: the aLIGO fit's closed form, Welch's PSD estimate of the generated noise,
the textbook time-to-coalescence τ₀ = (5/256) 𝓜^(-5/3) (πf)^(-8/3), zero-crossing frequencies of
the chirp, a matched filter computed here, brute-force pair counting for ROC AUC, and parameter
counts from the layer widths.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import compose, resolved_data, run_train

from lsr_adapt.errors import LsrAdaptError
from lsr_adapt.metrics import roc_auc
from lsr_adapt.tasks import gw_data
from lsr_adapt.tasks.gw import GWCollator, fit_positions, gw_metrics, load_detector, prepare_splits
from lsr_adapt.tasks.gw_data import (
    MSUN_S,
    GWParams,
    aligo_psd,
    chirp_frequency,
    chirp_mass,
    colored_noise,
    generate,
    inner,
    newtonian_chirp,
    whiten,
)

P = GWParams(sample_rate=2048, duration=2.0, waveform="numpy")


# -- generator -----------------------------------------------------------------------------------------
def test_aligo_psd_closed_form_and_noise_colour():
    # x = 1: 1e-49 · (1 − 5 + 111 · 0.5 / 1.5) = 3.3e-48
    assert aligo_psd(np.array([215.0]))[0] == pytest.approx(3.3e-48, rel=1e-12)
    from scipy.signal import welch

    rng = np.random.default_rng(0)
    est = np.mean([welch(colored_noise(rng, 8 * 2048, 2048), fs=2048, nperseg=1024)[1] for _ in range(8)], axis=0)
    f = np.fft.rfftfreq(1024, 1 / 2048)
    band = (f >= 30) & (f <= 800)
    ratio = est[band] / aligo_psd(f[band])
    assert np.all(np.abs(ratio - 1) < 0.2), ratio.min()


def test_whitening_gives_unit_white_noise_and_inner_product_identity():
    rng = np.random.default_rng(1)
    w = whiten(np.stack([colored_noise(rng, P.n, P.sample_rate) for _ in range(64)]), P.sample_rate, P.band)
    frac = (P.band[1] - P.band[0]) / (P.sample_rate / 2)  # unit spectral density, in band only
    assert w.var() == pytest.approx(frac, rel=0.03)
    spec = np.mean(np.abs(np.fft.rfft(w, axis=-1)) ** 2, axis=0) / P.n
    f = np.fft.rfftfreq(P.n, 1 / P.sample_rate)
    in_band = (f > 40) & (f < 900)
    assert np.std(spec[in_band]) / np.mean(spec[in_band]) < 0.2  # flat
    h = newtonian_chirp(np.arange(P.n) / P.sample_rate, 1.7, 30.0, 25.0, 0.3, 20.0)
    # ⟨h, h⟩ (frequency domain, PSD-weighted) = ‖whitened h‖² (time domain)
    assert inner(h, h, P.sample_rate, P.band) == pytest.approx(np.sum(whiten(h, P.sample_rate, P.band) ** 2), rel=1e-9)


def test_chirp_follows_leading_order_frequency_evolution():
    m1, m2 = 20.0, 15.0
    mc = chirp_mass(m1, m2)
    assert mc == pytest.approx((m1 * m2) ** 0.6 / (m1 + m2) ** 0.2)
    # τ₀(f) = (5/256) 𝓜^(-5/3) (πf)^(-8/3) inverted by chirp_frequency
    m = mc * MSUN_S
    for f in (25.0, 60.0, 150.0):
        tau = 5 / 256 * m ** (-5 / 3) * (math.pi * f) ** (-8 / 3)
        assert chirp_frequency(tau, mc) == pytest.approx(f, rel=1e-9)
    fs, tc = 16384, 3.0
    t = np.arange(int(3.2 * fs)) / fs
    h = newtonian_chirp(t, tc, m1, m2, 0.0, 20.0)
    crossings = t[1:][np.sign(h[1:]) != np.sign(h[:-1])]
    crossings = crossings[(crossings > 1.0) & (crossings < tc - 0.05)]
    f_measured = 0.5 / np.diff(crossings)  # half a period between zero crossings
    f_formula = chirp_frequency(tc - 0.5 * (crossings[1:] + crossings[:-1]), mc)
    assert np.allclose(f_measured, f_formula, rtol=0.02)
    f_isco = 1 / (6 ** 1.5 * math.pi * (m1 + m2) * MSUN_S)
    tau_isco = 5 / 256 * m ** (-5 / 3) * (math.pi * f_isco) ** (-8 / 3)
    assert np.all(h[t > tc - tau_isco + 1e-3] == 0)  # stops at the innermost stable orbit
    assert np.any(h[t < tc - tau_isco - 1e-3] != 0)


def test_generator_is_deterministic_per_seed_and_balanced():
    a, b = generate(P, 12, seed=3), generate(P, 12, seed=3)
    for k in ("h1_timeseries", "l1_timeseries", "labels", "injection_snr", "mass1"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["labels"].sum() == 6 and a["h1_timeseries"].shape == (12, P.n)
    other = generate(P, 12, seed=4)
    assert not np.array_equal(a["h1_timeseries"], other["h1_timeseries"])
    val = generate(P, 12, seed=3, split="validation")
    assert not np.array_equal(a["h1_timeseries"], val["h1_timeseries"])
    assert np.all((a["injection_snr"] == 0) == (a["labels"] == 0))


def test_positives_hold_the_requested_snr_and_negatives_do_not():
    d = generate(P, 40, seed=0, return_signals=True)
    pos, neg = np.where(d["labels"] == 1)[0], np.where(d["labels"] == 0)[0]
    lo, hi = P.snr_range
    assert np.all((d["injection_snr"][pos] >= lo) & (d["injection_snr"][pos] <= hi))
    tc_frac = d["coalescence_time"][pos] / P.duration
    assert np.all((tc_frac >= P.time_offset_range[0]) & (tc_frac <= P.time_offset_range[1]))
    errors = []
    for i in pos:
        # optimal SNR: a whitened signal's energy is ⟨h, h⟩
        optimal = math.sqrt(sum(np.sum(d[f"{det}_signal"][i].astype(float) ** 2) for det in ("h1", "l1")))
        assert optimal == pytest.approx(d["injection_snr"][i], rel=1e-4)
        # matched filter with the injected template: ρ_mf = ρ + N(0, 1) per detector, combined in quadrature
        mf = math.sqrt(sum(_filter(d[f"{det}_timeseries"][i], d[f"{det}_signal"][i]) ** 2 for det in ("h1", "l1")))
        errors.append(mf - d["injection_snr"][i])
    assert np.all(np.abs(errors) < 3.5) and abs(np.mean(errors)) < 1.0, errors
    # noise filtered with every positive's template: no detection (a 5σ network threshold)
    for i in neg:
        for j in pos:
            mf = math.sqrt(sum(_filter(d[f"{det}_timeseries"][i], d[f"{det}_signal"][j]) ** 2 for det in ("h1", "l1")))
            assert mf < 5.0


def _filter(data, template) -> float:
    """Matched filter in whitened space (unit white noise): ⟨d, u⟩ with u the unit-norm template."""
    u = template.astype(np.float64)
    return float(data.astype(np.float64) @ (u / np.linalg.norm(u)))


def test_generator_rejects_bad_settings():
    with pytest.raises(LsrAdaptError, match="unknown data.waveform 'eob'; valid choices: auto, numpy, pycbc"):
        GWParams(waveform="eob").check()
    with pytest.raises(LsrAdaptError, match="data.snr_range"):
        GWParams(snr_range=(10.0, 5.0)).check()
    with pytest.raises(LsrAdaptError, match="f_lower"):
        GWParams(sample_rate=256, f_upper=200.0).check()
    if not gw_data.use_pycbc(GWParams(waveform="auto")):
        with pytest.raises(LsrAdaptError, match="pip install pycbc"):
            generate(GWParams(waveform="pycbc", duration=1.0), 2, seed=0)


# -- metrics -------------------------------------------------------------------------------------------
def test_roc_auc_against_pair_counting():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # rounded: plenty of ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    want = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (len(pos) * len(neg))
    assert roc_auc(scores, labels) == pytest.approx(want, abs=1e-12)
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    snr = np.where(labels == 1, rng.uniform(6, 20, 300), 0.0)
    m = gw_metrics(["roc_auc", "accuracy", "f1"], scores, labels, snr, [6, 10, 20])
    assert m["accuracy"] == pytest.approx(np.mean((scores > 0) == labels))
    keep = (labels == 0) | (snr < 10)
    assert m["roc_auc_snr_6-10"] == pytest.approx(roc_auc(scores[keep], labels[keep]))
    assert "roc_auc_snr_6-10" not in gw_metrics(["roc_auc"], scores, labels, np.full(300, np.nan), [6, 10, 20])


# -- the model -----------------------------------------------------------------------------------------
def _tiny_detector(hidden=(16,), pooling="mean", **data):
    from lsr_adapt.smoke import tiny_checkpoint

    cfg = compose("experiment=smoke", "backbone=whisper_small", "adapter=lora", "data=gw_synthetic",
                  f"model.gw_head.hidden={list(hidden)}", f"model.gw_head.pooling={pooling}",
                  *[f"data.{k}={v}" for k, v in data.items()])
    torch.manual_seed(0)
    return load_detector(str(tiny_checkpoint("whisper")), cfg.data, cfg.model), cfg


def test_detector_shares_the_encoder_and_matches_a_manual_forward():
    loaded, cfg = _tiny_detector(hidden=(16, 8), pooling="last", sample_rate=2048, duration=2.0)
    model, fe = loaded.model, loaded.tokenizer
    assert fe.nb_max_frames == 26 and model.encoder.config.max_source_positions == 13  # 4096 samples → 26 frames
    d = 32  # tiny d_model
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("head.")) == \
        (2 * d + 1) * 16 + (16 + 1) * 8 + (8 + 1)
    assert sorted(loaded.new_param_names) == sorted(n for n, _ in model.named_parameters() if n.startswith("head."))
    data = generate(GWParams.from_config(cfg.data), 4, seed=0)
    rows = [{"input_h1": data["h1_timeseries"][i], "input_l1": data["l1_timeseries"][i],
             "labels": data["labels"][i], "snr": data["injection_snr"][i]} for i in range(4)]
    batch = GWCollator(fe)(rows)
    assert batch["input_h1"].shape == (4, 80, 26)
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        z = [model.encoder(batch[k]).last_hidden_state[:, -1] for k in ("input_h1", "input_l1")]
        want = model.head(torch.cat(z, dim=-1)).squeeze(-1)
    # the model may run both detectors as one batch (other matmul blockings): float32 sums along a 2-layer
    # d=32 encoder over 80 frames and the head, ~800 terms · eps32 ≈ 1e-4 relative (atol: logits near 0)
    torch.testing.assert_close(out.logits, want, rtol=1e-4, atol=1e-5)
    # the loss is BCE of its own logits (checked against the reference just above): a mean of 4 terms
    # and a log-sigmoid each, a few eps32; approx's default rel=1e-6 is ~8 eps32
    assert out.loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(out.logits, batch["labels"]).item())
    with pytest.raises(LsrAdaptError, match="data.n_frames 130 must be even and at most 26"):
        fit_positions(model.encoder, 130)


def test_whisper_method_configs_train_the_right_parameters():
    from lsr_adapt.modeling import prepare_model

    counts = {}
    for method, choice in [("lora", "backbone=whisper_small adapter=lora"), ("head", "backbone=whisper_small adapter=head"),
                           ("full", "model=whisper_full")]:
        assert compose(*choice.split()).model.adaptation_type == method
        loaded, cfg = _tiny_detector(sample_rate=2048, duration=2.0)
        section = cfg.model.get(method)
        counts[method] = prepare_model(loaded, method, dict(section) if section else {}, cfg.model.target_modules).counts
    head = (2 * 32 + 1) * 16 + 17
    assert counts["head"]["trainable_params"] == head
    assert counts["lora"]["trainable_params"] == head + 2 * 3 * 8 * (32 + 32)  # r=8 on q, k, v in 2 layers
    # everything but the fixed sinusoidal positions (a buffer): all of the base model + the head
    assert counts["full"]["trainable_params"] == counts["full"]["total_params"] == \
        sum(p.numel() for p in loaded.model.parameters())
    assert "encoder.embed_positions.weight" in dict(loaded.model.named_buffers())


def test_gw_disk_layout(tmp_path):
    from datasets import Dataset

    d = generate(P, 16, seed=0)
    Dataset.from_dict({"h1_timeseries": d["h1_timeseries"], "l1_timeseries": d["l1_timeseries"],
                       "labels": d["labels"]}).save_to_disk(str(tmp_path / "one"))
    cfg = compose("backbone=whisper_small", "adapter=lora", "data=gw_disk", f"data.path={tmp_path / 'one'}", "data.validation_from_train=0.25",
                  "data.n_frames=26")
    loaded, _ = _tiny_detector(sample_rate=2048, duration=2.0)
    splits = prepare_splits(cfg.data, loaded.tokenizer)
    assert (len(splits["train"]), len(splits["validation"])) == (12, 4) and "test" not in splits
    assert np.all(np.isnan(splits["train"]["snr"]))  # no injection_snr field
    with pytest.raises(LsrAdaptError, match="longer than data.n_frames × 160 = 3200"):
        prepare_splits(compose("data=gw_disk", f"data.path={tmp_path / 'one'}", "data.validation_from_train=0.25",
                               "data.n_frames=20").data, loaded.tokenizer)
    Dataset.from_dict({"h1_timeseries": d["h1_timeseries"], "labels": d["labels"]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(LsrAdaptError, match=r"lacks field\(s\) \['l1_timeseries'\]"):
        prepare_splits(compose("data=gw_disk", f"data.path={tmp_path / 'bad'}", "data.validation_from_train=0.25",
                               "data.n_frames=26").data, loaded.tokenizer)
    with pytest.raises(LsrAdaptError, match="is not a datasets.save_to_disk directory"):
        prepare_splits(compose("data=gw_disk", "data.n_frames=26").data, loaded.tokenizer)


def test_whisper_smoke_run_and_recorded_auc(tmp_path):
    from lsr_adapt.artifacts import load_adapter

    over = ("backbone=whisper_small", "adapter=lora", "data=gw_synthetic", "data.sample_rate=2048", "data.duration=2.0",
            "data.synthetic_sizes={train: 48, validation: 32, test: 16}", "model.gw_head.hidden=[16]",
            "training.num_train_epochs=1", "training.batch_size=8", "data.waveform=numpy")
    res = run_train(tmp_path, *over)
    assert res["task_type"] == "gw" and res["metric_name"] == "roc_auc"
    assert set(res["metrics_before_training"]) == {"roc_auc", "accuracy", "f1"}
    assert res["adapter_params"] == 2 * 3 * 8 * 64 and res["head_params"] == (2 * 32 + 1) * 16 + 17
    assert any(k.startswith("roc_auc_snr_") for k in res["eval_history"][0])
    assert set(res["test_metrics"]) == {"roc_auc", "accuracy", "f1", "loss"}
    # the saved adapter + head, reloaded, score the validation split as recorded
    cfg = compose("experiment=smoke", *over)
    loaded, _ = _tiny_detector(sample_rate=2048, duration=2.0)
    load_adapter(loaded.model, tmp_path)
    val = prepare_splits(resolved_data(cfg.data), loaded.tokenizer, need_train=False)["validation"]
    batch = GWCollator(loaded.tokenizer)([val[i] for i in range(len(val))])
    loaded.model.eval()
    with torch.no_grad():
        logits = loaded.model(**batch).logits.numpy()
    assert roc_auc(logits, batch["labels"].numpy()) == pytest.approx(res["best_metric"], abs=1e-6)


def test_pycbc_waveforms_are_placed_projected_and_scaled(monkeypatch):
    """The pycbc path, against a stand-in ``pycbc.waveform`` (pycbc itself is an optional extra):
    h = h+ cos φ + h× sin φ, the merger (pycbc's t=0) at t_c, scaled to the requested SNR."""
    import importlib.machinery
    import sys
    import types

    calls = []

    class Series(np.ndarray):
        start_time = -0.5

    def get_td_waveform(approximant, mass1, mass2, delta_t, f_lower):
        calls.append((approximant, mass1, mass2, delta_t, f_lower))
        t = np.arange(-0.5, 0, delta_t)
        env = np.sin(np.pi * (t + 0.5) / 0.5) ** 2  # smooth start and end
        return (np.cos(2 * np.pi * 100 * t) * env).view(Series), (np.sin(2 * np.pi * 100 * t) * env).view(Series)

    pkg, sub = types.ModuleType("pycbc"), types.ModuleType("pycbc.waveform")
    sub.get_td_waveform = get_td_waveform
    pkg.__spec__ = importlib.machinery.ModuleSpec("pycbc", None)
    pkg.waveform = sub
    monkeypatch.setitem(sys.modules, "pycbc", pkg)
    monkeypatch.setitem(sys.modules, "pycbc.waveform", sub)
    p = GWParams(sample_rate=2048, duration=2.0, waveform="auto", approximant="SEOBNRv4")
    assert gw_data.use_pycbc(p)
    d = generate(p, 6, seed=0, return_signals=True)
    assert d["waveform"] == "pycbc" and calls and calls[0][0] == "SEOBNRv4" and calls[0][3] == 1 / 2048
    t = np.arange(p.n) / p.sample_rate
    for i in np.where(d["labels"] == 1)[0]:
        sig = d["h1_signal"][i].astype(np.float64)
        assert math.sqrt(np.sum(sig ** 2) + np.sum(d["l1_signal"][i].astype(np.float64) ** 2)) == \
            pytest.approx(d["injection_snr"][i], rel=1e-4)
        tc, phase = d["coalescence_time"][i], d["phase"][i]
        inside = (t > tc - 0.55) & (t < tc + 0.05)
        assert np.sum(sig[inside] ** 2) > 0.99 * np.sum(sig ** 2)  # placed before t_c
        env = np.sin(np.pi * (t - tc + 0.5) / 0.5) ** 2
        want = np.where((t >= tc - 0.5) & (t < tc), env * np.cos(2 * np.pi * 100 * (t - tc) - phase), 0.0)
        assert np.corrcoef(sig, want)[0, 1] > 0.99  # h+ cos φ + h× sin φ = cos(2π·100·t − φ)
