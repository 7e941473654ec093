r"""The ensemble-space algebra shared by ETKF, LETKF and the stochastic EnKF.

With N members, background anomalies A = X_b − x̄_b (N × n), observed anomalies
Y = H(X_b) − mean (N × p), inverse error variances r⁻¹ (p; localisation weights folded
in for LETKF), all three methods use the N × N matrix (Hunt et al. 2007, eq. 21)

.. math:: M = (N-1) I + Y\,\mathrm{diag}(r^{-1})\,Y^\top = V \Lambda V^\top .

ETKF mean weights  w̄ = M⁻¹ Y diag(r⁻¹) d,  d = y − ȳ  (eq. 22),
symmetric square root  W = [(N−1) M⁻¹]^{1/2} = V √((N−1)/Λ) Vᵀ  (eq. 24),
analysis members  X_a = x̄_b + (w̄ + W)ᵀ A.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ensemble_space_eigh(y_anom: jax.Array, rinv: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigen-decomposition (Λ, V) of M = (N−1)I + Y diag(rinv) Yᵀ."""
    n = y_anom.shape[0]
    m = (n - 1) * jnp.eye(n, dtype=y_anom.dtype) + (y_anom * rinv) @ y_anom.T
    return jnp.linalg.eigh(m)


def etkf_weights(y_anom: jax.Array, innovation: jax.Array, rinv: jax.Array) -> jax.Array:
    """Analysis weights ``w̄ + W`` (N × N; column j gives member j), symmetric square root."""
    n = y_anom.shape[0]
    lam, v = ensemble_space_eigh(y_anom, rinv)
    lam = jnp.maximum(lam, (n - 1) * 1e-6)  # M ≥ (N−1)I in exact arithmetic
    w_mean = v @ ((v.T @ ((y_anom * rinv) @ innovation)) / lam)
    w_sqrt = (v * jnp.sqrt((n - 1) / lam)) @ v.T
    return w_mean[:, None] + w_sqrt


def anomalies(ensemble: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, anomalies) along the member axis 0."""
    mean = ensemble.mean(0)
    return mean, ensemble - mean


def observed_anomalies(background: jax.Array, obs) -> tuple[jax.Array, jax.Array]:
    """Mean and anomalies of H(X_b) — ensemble-based, so nonlinear H works too."""
    return anomalies(obs.h(background))
