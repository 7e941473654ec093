r"""Samplers of the EDM probability-flow ODE, with optional stochastic churn.

The ODE in the EDM σ-parametrisation (Karras et al. 2022, eq. 4 with σ(t) = t, s(t) = 1):

.. math:: \frac{dx}{d\sigma} = \frac{x - D(x, \sigma)}{\sigma},

integrated on the ρ-schedule σ_0 = σ_max > … > σ_{N−1} = σ_min > σ_N = 0 (``EDM.sigmas``)
from x ~ N(0, σ_max² I). Solvers (one step σ̂ → σ'):

- ``heun``: EDM Algorithm 2. Euler x' = x + (σ' − σ̂) d, d = (x − D(x, σ̂)) / σ̂, then the
  trapezoidal correction with d' = (x' − D(x', σ')) / σ' (skipped when σ' = 0).
- ``dpm2s``: DPM-Solver++(2S) (Lu et al. 2022, Alg. 1, r = 1/2) with α = 1, λ = −ln σ:
  the first-order data-prediction update x_t = (σ_t/σ_s) x_s + (1 − σ_t/σ_s) D is exact for a
  constant D; the midpoint σ_m = sqrt(σ̂ σ') gives
  u = (σ_m/σ̂) x + (1 − σ_m/σ̂) D(x, σ̂),  x' = (σ'/σ̂) x + (1 − σ'/σ̂) D(u, σ_m);
  the last step (σ' = 0) is x' = D(x, σ̂).

Both cost 2 denoiser calls per step and 1 on the last: NFE = 2N − 1 (GenCast: 20 levels,
39 calls). Churn (EDM Alg. 2): if s_tmin ≤ σ_i ≤ s_tmax, σ̂ = σ_i (1 + γ) with
γ = min(S_churn / N, √2 − 1) and x̂ = x + s_noise sqrt(σ̂² − σ_i²) ε; otherwise σ̂ = σ_i.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal

import jax
import jax.numpy as jnp

from ensda.diffusion.edm import EDM, Denoiser

KINDS = ("heun", "dpm2s")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Solver, number of steps N and the EDM churn settings (S_churn, S_tmin, S_tmax, S_noise)."""

    kind: Literal["heun", "dpm2s"] = "heun"
    steps: int = 20
    churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"SamplerConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if not (isinstance(self.steps, numbers.Integral) and self.steps >= 1):
            raise ValueError(f"SamplerConfig.steps must be an int >= 1, got {self.steps!r}")
        if not self.churn >= 0:
            raise ValueError(f"SamplerConfig.churn must be >= 0, got {self.churn}")
        if not self.s_noise >= 0:
            raise ValueError(f"SamplerConfig.s_noise must be >= 0, got {self.s_noise}")
        if not self.s_tmin <= self.s_tmax:
            raise ValueError(
                f"SamplerConfig needs s_tmin <= s_tmax, got {self.s_tmin}, {self.s_tmax}"
            )


def nfe(config: SamplerConfig) -> int:
    """Denoiser calls per sample: 2 per step, 1 on the last step (σ' = 0): 2N − 1."""
    return 2 * config.steps - 1


def _call(denoiser: Denoiser, z: jax.Array, sigma: jax.Array, count: jax.Array):
    """One counted denoiser call."""
    return denoiser(z, sigma), count + 1


def churn(x: jax.Array, sigma: jax.Array, key: jax.Array, config: SamplerConfig):
    """EDM churn: raise σ_i to σ̂ = σ_i (1 + γ_i) and add the matching noise; returns
    ``(x̂, σ̂)``."""
    if config.churn == 0 or config.s_noise == 0:
        return x, sigma
    gamma_max = min(config.churn / config.steps, math.sqrt(2.0) - 1.0)
    gamma = jnp.where((sigma >= config.s_tmin) & (sigma <= config.s_tmax), gamma_max, 0.0)
    eps = jax.random.normal(key, x.shape, x.dtype)
    # sqrt(σ̂² − σ²) = σ sqrt(γ (2 + γ)): no cancellation (σ̂² − σ² may round below 0)
    return x + config.s_noise * sigma * jnp.sqrt(gamma * (2.0 + gamma)) * eps, sigma * (1.0 + gamma)


def step(
    denoiser: Denoiser,
    x: jax.Array,
    count: jax.Array,
    sigma: jax.Array,
    sigma_next: jax.Array,
    key: jax.Array,
    config: SamplerConfig,
    final: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """One sampler step σ_i → σ_{i+1} (churn, then the solver); ``final``: σ_{i+1} = 0.

    ``count`` is the denoiser-call counter, returned incremented by the calls made.
    """
    x, sigma = churn(x, sigma, key, config)
    d0, count = _call(denoiser, x, sigma, count)
    if final:  # Euler (Heun) and DPM-Solver++ both land on D(x, σ̂) at σ' = 0
        return d0, count
    if config.kind == "heun":
        slope = (x - d0) / sigma
        x_euler = x + (sigma_next - sigma) * slope
        d1, count = _call(denoiser, x_euler, sigma_next, count)
        slope_next = (x_euler - d1) / sigma_next
        return x + (sigma_next - sigma) * 0.5 * (slope + slope_next), count
    sigma_mid = jnp.sqrt(sigma * sigma_next)
    ratio_mid = sigma_mid / sigma
    u = ratio_mid * x + (1.0 - ratio_mid) * d0
    d_mid, count = _call(denoiser, u, sigma_mid, count)
    ratio = sigma_next / sigma
    return ratio * x + (1.0 - ratio) * d_mid, count


def sample(
    denoiser: Denoiser,
    key: jax.Array,
    shape,
    edm: EDM,
    config: SamplerConfig,
    x_init: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Draw one sample of shape ``shape``; returns ``(x0, nfe_count)``.

    Starts from σ_max ε (or ``x_init``, a state already at noise level σ_max), runs the
    first N − 1 steps in a ``lax.scan`` and the last (to σ = 0) after it. ``nfe_count`` is
    the int32 number of denoiser calls made, counted in the scan state (= ``nfe(config)``).
    ``key`` is split into the initial-noise key and the churn key (step i: ``fold_in(., i)``);
    a deterministic config (churn 0) with the same key gives the same sample.
    """
    sig = edm.sigmas(config.steps)
    init_key, step_key = jax.random.split(key)
    if x_init is None:
        x = edm.sigma_max * jax.random.normal(init_key, tuple(shape), jnp.float32)
    else:
        x = jnp.asarray(x_init, jnp.float32)
        if x.shape != tuple(shape):
            raise ValueError(f"sample: x_init has shape {x.shape}, expected {tuple(shape)}")
    count = jnp.zeros((), jnp.int32)

    def body(carry, i):
        x, count = carry
        k = jax.random.fold_in(step_key, i)
        return step(denoiser, x, count, sig[i], sig[i + 1], k, config), None

    (x, count), _ = jax.lax.scan(body, (x, count), jnp.arange(config.steps - 1))
    last = config.steps - 1
    x, count = step(
        denoiser,
        x,
        count,
        sig[last],
        sig[last + 1],
        jax.random.fold_in(step_key, last),
        config,
        final=True,
    )
    return x, count
