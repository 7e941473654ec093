r"""Likelihood guidance: a wrapper that turns a prior denoiser into a posterior one.

With z = x + σ ε, the posterior denoiser given observations y ~ N(h(x), R) is, by
Tweedie's formula (see ``edm``),

.. math:: D(z, \sigma \mid y) = D(z, \sigma) + \sigma^2 \nabla_z \log p(y \mid z),

and p(y | z) is approximated by N(y; h(D(z, σ)), C_σ) (DPS, Chung et al. 2023; score-based
DA, Rozet & Louppe 2023). The gradient goes through the denoiser; C_σ is held fixed in it
(as in DPS/SDA: no second derivatives of the denoiser). The wrapper returns

.. math:: D'(z, \sigma) = D(z, \sigma)
          + \lambda \sigma^2 \nabla_z \log N(y; h(D(z, \sigma)), C_\sigma),

λ the guidance strength, with one of two covariances:

- ``cov="scalar"``: C_σ = diag(r) + γ σ² sd² / (σ² + sd²) I — the DPS/SDA variance γ σ²,
  saturated at the data variance sd²; exact for an isotropic prior N(μ, sd² I), linear h
  that selects components, and γ = 1. Cost per call: one forward and one backward pass.
- ``cov="jacobian"``: C_σ = diag(r) + γ σ² H_x J H_xᵀ with J = ∂D/∂z (σ² J = Cov[x | z],
  Tweedie) and H_x = ∂h/∂x at D(z, σ); exact (the Kalman posterior) for a Gaussian prior
  and linear h with γ = λ = 1. Cost per call: one forward and p backward passes
  (p = number of observations).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ensda.diffusion.edm import Denoiser

COVS = ("scalar", "jacobian")


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def likelihood_guided(
    denoiser: Denoiser,
    h,
    y,
    r_var,
    strength,
    gamma=1.0,
    sigma_data: float = 1.0,
    cov: str = "scalar",
) -> Denoiser:
    """Wrap ``denoiser`` with likelihood guidance (see the module docstring).

    h: ``x0_hat -> (p,)`` predicted observations (may be nonlinear); y ``(p,)``;
    r_var ``(p,)`` observation-error variances; strength λ >= 0 (0: the unguided values);
    gamma γ >= 0; sigma_data the data std sd (``cov="scalar"`` only).
    """
    if cov not in COVS:
        raise ValueError(f"likelihood_guided: cov must be one of {COVS}, got {cov!r}")
    y = jnp.asarray(y, jnp.float32)
    r_var = jnp.asarray(r_var, jnp.float32)
    if y.ndim != 1:
        raise ValueError(f"likelihood_guided: y must be a vector (p,), got shape {y.shape}")
    if r_var.shape != y.shape:
        raise ValueError(
            f"likelihood_guided: r_var shape {r_var.shape} does not match y shape {y.shape}"
        )
    if _concrete(r_var) and not np.all(np.asarray(r_var) > 0):
        raise ValueError("likelihood_guided: r_var (observation-error variances) must be > 0")
    if _concrete(strength) and not float(strength) >= 0:
        raise ValueError(f"likelihood_guided: strength must be >= 0, got {strength}")
    if _concrete(gamma) and not float(gamma) >= 0:
        raise ValueError(f"likelihood_guided: gamma must be >= 0, got {gamma}")
    if not sigma_data > 0:
        raise ValueError(f"likelihood_guided: sigma_data must be > 0, got {sigma_data}")
    if _concrete(strength) and float(strength) == 0:
        return denoiser
    p = y.shape[0]

    def guided(z: jax.Array, sigma: jax.Array) -> jax.Array:
        sigma = jnp.asarray(sigma, jnp.float32)

        def predict(z_):
            x0_ = denoiser(z_, sigma)
            return h(x0_), x0_

        hx, vjp_fn, x0 = jax.vjp(predict, z, has_aux=True)
        if hx.shape != y.shape:
            raise ValueError(
                f"likelihood_guided: h(x0) has shape {hx.shape}, y has shape {y.shape}"
            )
        resid = y - hx
        s2 = sigma**2
        if cov == "scalar":
            c = r_var + gamma * s2 * sigma_data**2 / (s2 + sigma_data**2)
            (grad,) = vjp_fn(resid / c)
        else:
            (rows,) = jax.vmap(vjp_fn)(jnp.eye(p, dtype=hx.dtype))  # H_x J, (p, *z.shape)
            hx_jac = jax.jacrev(h)(x0)  # H_x, (p, *x0.shape)
            m = rows.reshape(p, -1) @ hx_jac.reshape(p, -1).T
            c = jnp.diag(r_var) + gamma * s2 * 0.5 * (m + m.T)
            w = jnp.linalg.solve(jax.lax.stop_gradient(c), resid)
            grad = jnp.tensordot(w, rows, axes=1)
        return x0 + strength * s2 * grad

    return guided
