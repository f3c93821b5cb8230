"""Synthetic two-detector gravitational-wave strain (``data=gw_synthetic``), deterministic per seed.

Every sample is ``duration`` seconds at ``sample_rate`` Hz for H1 and L1:

1. **Noise**: stationary Gaussian noise coloured by the analytic advanced-LIGO (zero-detuned,
   high-power) fit ``aligo_psd``, drawn in the frequency domain: ``ñ_k = sqrt(N·S(f_k)/(4Δt))·(a + ib)``
   with a, b ~ N(0, 1), so that E|ñ_k|² = N·S(f_k)/(2Δt) (one-sided PSD S).
2. **Signal** (exactly half of the samples, ``positive_fraction``): an inspiral chirp at leading
   (Newtonian) post-Newtonian order, ``newtonian_chirp``: h(t) ∝ τ^(-1/4) cos(Φ(τ) + φ) with
   τ = t_c − t, Φ(τ) = −2 (τ / 5𝓜)^(5/8), instantaneous frequency
   f(τ) = (1/8π) 5^(3/8) 𝓜^(-5/8) τ^(-3/8) (𝓜 = G·M_chirp/c³ in seconds), from ``f_lower`` up to
   the innermost stable circular orbit f_ISCO = 1 / (6^(3/2) π G M / c³), then zero. Component
   masses are uniform in ``mass_range``, the coalescence time t_c uniform in ``time_offset_range``
   (fractions of the window), the phase φ uniform. With ``waveform: pycbc`` (or ``auto`` when
   pycbc is installed) the polarisations come from ``pycbc.waveform.get_td_waveform`` instead
   (``approximant``, default IMRPhenomD, inspiral-merger-ringdown).
   The two detectors see the same source: L1 is delayed by up to 10 ms and has its own phase
   offset, and the network optimal SNR ρ (uniform in ``snr_range``) is split as
   ρ_H = ρ cos θ, ρ_L = ρ sin θ with θ uniform in [π/8, 3π/8] (a stand-in for antenna patterns).
   Each detector's signal is scaled to its SNR with the noise-weighted inner product
   ⟨a, b⟩ = 4 Re Σ_k ã_k b̃_k* / S(f_k) Δf over [f_lower, f_upper].
3. **Whitening**: ``w̃_k = s̃_k · sqrt(2Δt / S(f_k))`` in the band, 0 outside, so whitened noise has
   unit variance and a whitened signal's sum of squares is its ⟨h, h⟩, i.e. its SNR².

The whitened series are what Whisper sees (tasks/gw.py turns them into log-mel features).
Labels: 1 = chirp present; ``injection_snr`` is the network SNR (0 for noise).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import numpy as np

from ..errors import LsrAdaptError

MSUN_S = 4.925490947641267e-06  # G·M_sun / c³ in seconds
MAX_DETECTOR_DELAY_S = 0.010  # H1-L1 light travel time is 10 ms
WAVEFORMS = ("auto", "numpy", "pycbc")


@dataclass(frozen=True)
class GWParams:
    sample_rate: int = 2048
    duration: float = 2.0
    f_lower: float = 20.0
    f_upper: float | None = None  # None: 0.95 × Nyquist
    snr_range: tuple[float, float] = (6.0, 20.0)
    mass_range: tuple[float, float] = (10.0, 50.0)
    time_offset_range: tuple[float, float] = (0.6, 0.9)
    positive_fraction: float = 0.5
    waveform: str = "auto"
    approximant: str = "IMRPhenomD"
    taper_s: float = 0.1  # a chirp already in band at the window's start is faded in over this

    @property
    def n(self) -> int:
        return int(round(self.sample_rate * self.duration))

    @property
    def band(self) -> tuple[float, float]:
        return self.f_lower, self.f_upper or 0.95 * self.sample_rate / 2

    @classmethod
    def from_config(cls, cfg) -> GWParams:
        keys = {k: cfg.get(k) for k in ("sample_rate", "duration", "f_lower", "f_upper", "snr_range", "mass_range",
                                        "time_offset_range", "positive_fraction", "waveform", "approximant")
                if cfg.get(k) is not None}
        for k in ("snr_range", "mass_range", "time_offset_range"):
            if k in keys:
                keys[k] = tuple(float(v) for v in keys[k])
        p = cls(**keys)
        p.check()
        return p

    def check(self) -> None:
        if self.waveform not in WAVEFORMS:
            raise LsrAdaptError(f"unknown data.waveform {self.waveform!r}; valid choices: {', '.join(WAVEFORMS)}")
        lo, hi = self.band
        if not 0 < lo < hi <= self.sample_rate / 2:
            raise LsrAdaptError(f"need 0 < data.f_lower ({lo}) < f_upper ({hi}) <= sample_rate/2 ({self.sample_rate / 2})")
        for name, (a, b), floor in [("snr_range", self.snr_range, 0), ("mass_range", self.mass_range, 0),
                                    ("time_offset_range", self.time_offset_range, 0)]:
            if not floor <= a <= b or (name == "time_offset_range" and b > 1):
                raise LsrAdaptError(f"data.{name} [{a}, {b}] must be an increasing pair"
                                    + (" of fractions in [0, 1]" if name == "time_offset_range" else " >= 0"))
        if not 0 <= self.positive_fraction <= 1:
            raise LsrAdaptError(f"data.positive_fraction {self.positive_fraction} must be in [0, 1]")


# -- noise ---------------------------------------------------------------------------------------------
def aligo_psd(f: np.ndarray) -> np.ndarray:
    """Analytic advanced-LIGO design PSD (zero-detuned high power), one-sided, 1/Hz:
    S(f) = 10⁻⁴⁹ [x^(-4.14) − 5x^(-2) + 111 (1 − x² + x⁴/2) / (1 + x²/2)], x = f / 215 Hz
    (Ajith 2011, Phys. Rev. D 84, 084037, Eq. 4.7). Frequencies below 10 Hz get the 10 Hz value."""
    x = np.maximum(np.asarray(f, dtype=np.float64), 10.0) / 215.0
    return 1e-49 * (x ** -4.14 - 5 * x ** -2 + 111 * (1 - x ** 2 + 0.5 * x ** 4) / (1 + 0.5 * x ** 2))


def frequencies(n: int, sample_rate: float) -> np.ndarray:
    return np.fft.rfftfreq(n, 1.0 / sample_rate)


def colored_noise(rng: np.random.Generator, n: int, sample_rate: float, psd=aligo_psd) -> np.ndarray:
    """Stationary Gaussian noise with one-sided PSD ``psd`` (circular: no edge transients)."""
    dt = 1.0 / sample_rate
    f = frequencies(n, sample_rate)
    scale = np.sqrt(n * psd(f) / (4 * dt))
    spec = scale * (rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f)))
    spec[0] = 0.0
    if n % 2 == 0:
        spec[-1] = 0.0  # the Nyquist bin of a real series is real; leave it out
    return np.fft.irfft(spec, n)


def band_mask(n: int, sample_rate: float, band) -> np.ndarray:
    f = frequencies(n, sample_rate)
    return (f >= band[0]) & (f <= band[1])


def whiten(x: np.ndarray, sample_rate: float, band, psd=aligo_psd) -> np.ndarray:
    """w̃ = x̃ · sqrt(2Δt / S) in ``band`` (0 outside): unit-variance noise, ‖w_signal‖² = ⟨h, h⟩."""
    n = x.shape[-1]
    f = frequencies(n, sample_rate)
    gain = np.where(band_mask(n, sample_rate, band), np.sqrt(2.0 / (sample_rate * psd(f))), 0.0)
    return np.fft.irfft(np.fft.rfft(x, axis=-1) * gain, n, axis=-1)


def inner(a: np.ndarray, b: np.ndarray, sample_rate: float, band, psd=aligo_psd) -> float:
    """Noise-weighted inner product ⟨a, b⟩ = 4 Re Σ_k ã_k b̃_k* / S(f_k) Δf, ã = Δt·DFT(a), over ``band``."""
    n = a.shape[-1]
    dt, f = 1.0 / sample_rate, frequencies(n, sample_rate)
    mask = band_mask(n, sample_rate, band)
    fa, fb = np.fft.rfft(a) * dt, np.fft.rfft(b) * dt
    return float(4 * np.real(np.sum(fa[mask] * np.conj(fb[mask]) / psd(f[mask]))) / (n * dt))


# -- signal --------------------------------------------------------------------------------------------
def chirp_mass(m1: float, m2: float) -> float:
    return (m1 * m2) ** 0.6 / (m1 + m2) ** 0.2


def isco_frequency(m1: float, m2: float) -> float:
    return 1.0 / (6 ** 1.5 * math.pi * (m1 + m2) * MSUN_S)


def chirp_frequency(tau: np.ndarray, mchirp: float) -> np.ndarray:
    """Leading-order GW frequency τ seconds before coalescence: (1/8π) 5^(3/8) 𝓜^(-5/8) τ^(-3/8)."""
    m = mchirp * MSUN_S
    return 5 ** 0.375 / (8 * math.pi) * m ** -0.625 * np.asarray(tau) ** -0.375


def newtonian_chirp(t: np.ndarray, tc: float, m1: float, m2: float, phase: float, f_lower: float) -> np.ndarray:
    """Unit-scale inspiral h(t) = τ^(-1/4) cos(−2(τ/5𝓜)^(5/8) + φ) where f_lower ≤ f(τ) ≤ f_ISCO, else 0."""
    m = chirp_mass(m1, m2) * MSUN_S
    tau = tc - t
    out = np.zeros_like(t)
    on = tau > 0
    f = np.zeros_like(t)
    f[on] = chirp_frequency(tau[on], chirp_mass(m1, m2))
    on &= (f >= f_lower) & (f <= isco_frequency(m1, m2))
    out[on] = tau[on] ** -0.25 * np.cos(-2.0 * (tau[on] / (5 * m)) ** 0.625 + phase)
    return out


def _pycbc_polarisations(p: GWParams, m1: float, m2: float):
    try:
        from pycbc.waveform import get_td_waveform
    except ImportError:
        raise LsrAdaptError("data.waveform=pycbc needs pycbc: pip install pycbc (or use waveform=numpy)") from None
    hp, hc = get_td_waveform(approximant=p.approximant, mass1=m1, mass2=m2, delta_t=1.0 / p.sample_rate,
                             f_lower=p.f_lower)
    # sample times relative to the merger (pycbc puts t=0 at the peak)
    return np.asarray(hp), np.asarray(hc), float(hp.start_time)


def use_pycbc(p: GWParams) -> bool:
    if p.waveform == "pycbc":
        return True
    return p.waveform == "auto" and importlib.util.find_spec("pycbc") is not None


def _taper(n: int, sample_rate: float, seconds: float) -> np.ndarray:
    w = np.ones(n)
    k = min(n, int(seconds * sample_rate))
    if k > 1:
        w[:k] = 0.5 * (1 - np.cos(np.pi * np.arange(k) / k))
    return w


def _detector_signal(p: GWParams, t: np.ndarray, tc: float, m1: float, m2: float, phase: float, pycbc) -> np.ndarray:
    if pycbc is None:
        h = newtonian_chirp(t, tc, m1, m2, phase, p.f_lower)
    else:  # h = h+ cos φ + h× sin φ, merger at tc
        hp, hc, start = pycbc
        rel = t - tc - start
        idx = np.round(rel * p.sample_rate).astype(int)
        ok = (idx >= 0) & (idx < len(hp))
        h = np.zeros_like(t)
        h[ok] = hp[idx[ok]] * math.cos(phase) + hc[idx[ok]] * math.sin(phase)
    return h * _taper(len(t), p.sample_rate, p.taper_s)


def generate(p: GWParams, n_samples: int, seed: int, split: str = "train", return_signals: bool = False) -> dict:
    """``n_samples`` whitened two-detector samples; the same (params, seed, split) always gives the same data.

    Returns arrays ``h1_timeseries``, ``l1_timeseries`` (n_samples × N, float32), ``labels`` (0/1),
    ``injection_snr`` (network SNR, 0 for noise), ``mass1``, ``mass2``, ``coalescence_time`` (s),
    ``phase`` (NaN for noise), ``waveform``; with ``return_signals`` also the whitened noise-free
    signals ``h1_signal``, ``l1_signal`` (zeros for noise).
    """
    p.check()
    split_key = int.from_bytes(split.encode()[:8].ljust(8, b"\0"), "little")
    n_pos = int(round(n_samples * p.positive_fraction))
    order = np.random.default_rng([seed, split_key]).permutation(n_samples)
    labels = np.zeros(n_samples, dtype=np.int64)
    labels[order[:n_pos]] = 1
    pycbc = use_pycbc(p)
    t = np.arange(p.n) / p.sample_rate
    out = {k: np.zeros((n_samples, p.n), dtype=np.float32) for k in ("h1_timeseries", "l1_timeseries")}
    if return_signals:
        out.update({k: np.zeros((n_samples, p.n), dtype=np.float32) for k in ("h1_signal", "l1_signal")})
    meta = {k: np.full(n_samples, np.nan) for k in ("mass1", "mass2", "coalescence_time", "phase")}
    snr = np.zeros(n_samples)
    for i in range(n_samples):
        rng = np.random.default_rng([seed, split_key, i])
        strain = [colored_noise(rng, p.n, p.sample_rate), colored_noise(rng, p.n, p.sample_rate)]
        signals = [np.zeros(p.n), np.zeros(p.n)]
        if labels[i]:
            m1, m2 = sorted(rng.uniform(*p.mass_range, size=2))[::-1]
            rho = rng.uniform(*p.snr_range)
            tc = rng.uniform(*p.time_offset_range) * p.duration
            phase = rng.uniform(0, 2 * np.pi)
            theta = rng.uniform(np.pi / 8, 3 * np.pi / 8)
            delay = rng.uniform(-MAX_DETECTOR_DELAY_S, MAX_DETECTOR_DELAY_S)
            l1_phase = phase + rng.uniform(0, 2 * np.pi)
            pols = _pycbc_polarisations(p, m1, m2) if pycbc else None
            for d, (tcd, ph, rho_d) in enumerate([(tc, phase, rho * math.cos(theta)),
                                                 (tc + delay, l1_phase, rho * math.sin(theta))]):
                h = _detector_signal(p, t, tcd, m1, m2, ph, pols)
                norm = math.sqrt(max(inner(h, h, p.sample_rate, p.band), 0.0))
                if norm == 0:
                    raise LsrAdaptError(f"sample {i}: the chirp ({m1:.1f}+{m2:.1f} M☉) has no power in "
                                        f"[{p.band[0]}, {p.band[1]}] Hz within the window; widen the window or band")
                signals[d] = h * (rho_d / norm)
                strain[d] = strain[d] + signals[d]
            meta["mass1"][i], meta["mass2"][i], meta["coalescence_time"][i], meta["phase"][i] = m1, m2, tc, phase
            snr[i] = rho
        out["h1_timeseries"][i] = whiten(strain[0], p.sample_rate, p.band)
        out["l1_timeseries"][i] = whiten(strain[1], p.sample_rate, p.band)
        if return_signals:
            out["h1_signal"][i] = whiten(signals[0], p.sample_rate, p.band)
            out["l1_signal"][i] = whiten(signals[1], p.sample_rate, p.band)
    out.update(labels=labels, injection_snr=snr, waveform="pycbc" if pycbc else "numpy", **meta)
    return out
