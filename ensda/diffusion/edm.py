r"""EDM: preconditioning, training noise, loss and noise schedule (Karras et al. 2022).

A **denoiser** is a pure function ``D(z, sigma) -> x0_hat``: ``z`` one noisy sample of
any shape, ``sigma`` a scalar array; it returns the estimate of the clean sample. By
Tweedie's formula the optimal (L2) denoiser is the posterior mean,

.. math:: D(z, \sigma) = E[x \mid z] = z + \sigma^2 \nabla_z \log p_\sigma(z),
          \qquad \mathrm{Cov}[x \mid z] = \sigma^2\, \partial D / \partial z,

with ``z = x + sigma * eps``. A network ``F`` is wrapped with the EDM preconditioning
(Karras et al. 2022, Table 1):

.. math:: D(z, \sigma) = c_\text{skip}(\sigma) z + c_\text{out}(\sigma)
          F(c_\text{in}(\sigma) z, c_\text{noise}(\sigma)),

  c_skip = sd² / (σ² + sd²),  c_out = σ sd / sqrt(σ² + sd²),  c_in = 1 / sqrt(σ² + sd²),
  c_noise = ln(σ) / 4,

trained with ln σ ~ N(p_mean, p_std²) and the loss weight λ(σ) = (σ² + sd²) / (σ sd)²
(= 1 / c_out², so every noise level has unit effective weight on ``F``). Sampling uses
the ρ-schedule σ_i = (σ_max^(1/ρ) + i/(N−1) (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, i < N, σ_N = 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

#: ``D(z, sigma) -> x0_hat`` for one sample ``z`` of any shape and a scalar ``sigma``.
Denoiser = Callable[[jax.Array, jax.Array], jax.Array]
#: ``F(z_in, c_noise) -> F``: the raw network behind the preconditioning.
Network = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class EDM:
    """EDM settings (defaults: Karras et al. 2022, Table 1). See the module docstring."""

    sigma_data: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        if not self.sigma_data > 0:
            raise ValueError(f"EDM.sigma_data must be > 0, got {self.sigma_data}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"EDM needs 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )
        if not self.sigma_max < float("inf"):
            raise ValueError(f"EDM.sigma_max must be finite, got {self.sigma_max}")
        if not self.rho > 0:
            raise ValueError(f"EDM.rho must be > 0, got {self.rho}")
        if not self.p_std > 0:
            raise ValueError(f"EDM.p_std must be > 0, got {self.p_std}")

    def scalings(self, sigma) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """``(c_skip, c_out, c_in, c_noise)`` at ``sigma`` (any shape, elementwise)."""
        sigma = jnp.asarray(sigma, jnp.float32)
        sd = self.sigma_data
        var = sigma**2 + sd**2
        c_skip = sd**2 / var
        c_out = sigma * sd * jax.lax.rsqrt(var)
        c_in = jax.lax.rsqrt(var)
        c_noise = jnp.log(sigma) / 4.0
        return c_skip, c_out, c_in, c_noise

    def denoiser(self, net: Network) -> Denoiser:
        """The preconditioned denoiser ``D = c_skip z + c_out net(c_in z, c_noise)``."""

        def D(z: jax.Array, sigma: jax.Array) -> jax.Array:
            c_skip, c_out, c_in, c_noise = self.scalings(sigma)
            return c_skip * z + c_out * net(c_in * z, c_noise)

        return D

    def training_sigma(self, key: jax.Array, shape) -> jax.Array:
        """Training noise levels: ln σ ~ N(p_mean, p_std²)."""
        return jnp.exp(self.p_mean + self.p_std * jax.random.normal(key, shape, jnp.float32))

    def loss_weight(self, sigma) -> jax.Array:
        """λ(σ) = (σ² + sd²) / (σ sd)²."""
        sigma = jnp.asarray(sigma, jnp.float32)
        sd = self.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2

    def loss(
        self, net: Network, key: jax.Array, x0: jax.Array, weights: jax.Array | None = None
    ) -> jax.Array:
        """EDM loss of a batch ``x0 (B, ...)``: mean over b of
        λ(σ_b) · mean_i w_i (D(z_b, σ_b) − x0_b)_i².

        ``z_b = x0_b + σ_b ε_b``; ``net`` is called once on the batch:
        ``net(c_in z (B, ...), c_noise (B,))``; ``weights`` w (the shape of one sample,
        e.g. cos-latitude × per-variable; None: 1).
        """
        sigma_key, noise_key = jax.random.split(key)
        batch = x0.shape[0]
        sigma = self.training_sigma(sigma_key, (batch,))
        expand = (batch,) + (1,) * (x0.ndim - 1)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        z = x0 + sigma.reshape(expand) * jax.random.normal(noise_key, x0.shape, jnp.float32)
        out = net(c_in.reshape(expand) * z, c_noise)
        d = c_skip.reshape(expand) * z + c_out.reshape(expand) * out
        err = jnp.square(d - x0) if weights is None else weights * jnp.square(d - x0)
        per_sample = jnp.mean(err.reshape(batch, -1), axis=1)
        return jnp.mean(self.loss_weight(sigma) * per_sample)

    def sigmas(self, steps: int) -> jax.Array:
        """The ρ-schedule: ``steps + 1`` noise levels from σ_max down to σ_min, then 0."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        inv = 1.0 / self.rho
        frac = jnp.arange(steps, dtype=jnp.float32) / max(steps - 1, 1)
        s = (self.sigma_max**inv + frac * (self.sigma_min**inv - self.sigma_max**inv)) ** self.rho
        s = s.at[0].set(self.sigma_max)
        if steps > 1:
            s = s.at[-1].set(self.sigma_min)
        return jnp.concatenate([s, jnp.zeros((1,), jnp.float32)])


def gaussian_denoiser(mean, cov) -> Denoiser:
    r"""The exact denoiser of a Gaussian prior N(mean, cov) on vectors ``(n,)``.

    .. math:: D(z, \sigma) = \mu + \Sigma (\Sigma + \sigma^2 I)^{-1} (z - \mu)

    (evaluated in the eigenbasis of Σ). The reference for validating samplers and
    guidance: its sampling distribution and its posteriors are known in closed form.
    """
    mean = jnp.asarray(mean, jnp.float32)
    cov = jnp.asarray(cov, jnp.float32)
    if mean.ndim != 1 or cov.shape != mean.shape * 2:
        raise ValueError(
            f"gaussian_denoiser: mean (n,) and cov (n, n) needed, got {mean.shape}, {cov.shape}"
        )
    lam, u = jnp.linalg.eigh(cov)
    lam = jnp.maximum(lam, 0.0)

    def D(z: jax.Array, sigma: jax.Array) -> jax.Array:
        gain = lam / jnp.maximum(lam + jnp.square(sigma), jnp.finfo(jnp.float32).tiny)
        return mean + u @ (gain * (u.T @ (z - mean)))

    return D
