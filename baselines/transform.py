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
    return weights_from_moments((y_anom * rinv) @ y_anom.T, (y_anom * rinv) @ innovation)


def weights_from_moments(gram: jax.Array, rhs: jax.Array) -> jax.Array:
    """``etkf_weights`` from the observation moments ``gram = Y diag(r⁻¹) Yᵀ`` (N × N) and
    ``rhs = Y diag(r⁻¹) d`` (N), for analyses that sum them over observations themselves."""
    n = gram.shape[0]
    lam, v = jnp.linalg.eigh((n - 1) * jnp.eye(n, dtype=gram.dtype) + gram)
    lam = jnp.maximum(lam, (n - 1) * 1e-6)  # M ≥ (N−1)I in exact arithmetic
    w_mean = v @ ((v.T @ rhs) / lam)
    w_sqrt = (v * jnp.sqrt((n - 1) / lam)) @ v.T
    return w_mean[:, None] + w_sqrt


def anomalies(ensemble: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, anomalies) along the member axis 0."""
    mean = ensemble.mean(0)
    return mean, ensemble - mean


def observed_anomalies(background: jax.Array, obs) -> tuple[jax.Array, jax.Array]:
    """Mean and anomalies of H(X_b) — ensemble-based, so nonlinear H works too."""
    return anomalies(obs.h(background))


def local_update(b: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
    r"""``(w̄ + W)ᵀ v`` of one (local) ETKF problem, without forming the N × N weights.

    ``b = Y diag(√r⁻¹)`` (N × k) and ``s = √r⁻¹ ∘ d`` (k): the observed anomalies and the
    innovation scaled by the square roots of the (tapered) inverse error variances, so
    ``M = (N−1)I + b bᵀ`` and ``Y diag(r⁻¹) d = b s``. ``v`` (N,) is the vector the weights
    act on (an LETKF site's own anomaly column); the result is ``(w̄·v) 1 + W v``, W the
    symmetric square root, so the site's members are ``x̄ + (w̄·v) + W v``.

    The algebra is the same as ``etkf_weights``; only the eigen-decomposition moves to
    the smaller of the two spaces:

    - k ≥ N: M = V Λ Vᵀ (N × N) as in ``etkf_weights``, W v = V √((N−1)/Λ) Vᵀ v.
    - k < N: bᵀb = U Γ Uᵀ (k × k). By the push-through identity M⁻¹ b = b (aI + bᵀb)⁻¹
      (a = N−1), so w̄ = bU (a + Γ)⁻¹ Uᵀ s; M has eigenvalues a + γ on span(bU) and a on
      its complement, so W = I + bU diag(h(Γ)) (bU)ᵀ with
      h(γ) = (√(a/(a+γ)) − 1)/γ = −1 / (√(a+γ) (√a + √(a+γ))), smooth at γ = 0.
    """
    n, k = b.shape
    a = n - 1.0
    if k >= n:
        lam, vec = ensemble_space_eigh(b, jnp.ones((k,), b.dtype))
        lam = jnp.maximum(lam, a * 1e-6)  # M ≥ (N−1)I in exact arithmetic
        w_mean = vec @ ((vec.T @ (b @ s)) / lam)
        w_v = vec @ (jnp.sqrt(a / lam) * (vec.T @ v))
        return w_mean @ v + w_v
    gam, u = jnp.linalg.eigh(b.T @ b)
    gam = jnp.maximum(gam, 0.0)  # bᵀb ≥ 0 in exact arithmetic
    bu = b @ u  # (N, k)
    w_mean = bu @ ((u.T @ s) / (a + gam))
    root = jnp.sqrt(a + gam)
    h = -1.0 / (root * (jnp.sqrt(a) + root))
    return w_mean @ v + v + bu @ (h * (bu.T @ v))
