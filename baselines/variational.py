"""The algebra shared by the variational analyses (3D-Var on both testbeds, OI): the
background-error covariance from climatological samples or NMC pairs, its square root,
the exact gain and the preconditioned conjugate-gradient increment.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ensda.observe import Observations


def climatological_covariance(samples: jax.Array) -> jax.Array:
    """Sample covariance of attractor states ``(S, n)``."""
    return jnp.cov(samples, rowvar=False).astype(samples.dtype)


def nmc_covariance(
    testbed, samples: jax.Array, key: jax.Array, init_std: float, max_pairs: int = 4000
) -> jax.Array:
    """Covariance of M²(x_{t−2} + ε) − M(x_{t−1} + ε'), over consecutive attractor samples.

    ``samples`` are states one cycle apart; ε, ε' ~ N(0, init_std²) stand for analysis errors.
    """
    s = samples[: max_pairs + 2]
    k1, k2 = jax.random.split(key)
    x2 = s[:-2] + init_std * jax.random.normal(k1, s[:-2].shape, s.dtype)
    x1 = s[1:-1] + init_std * jax.random.normal(k2, s[1:-1].shape, s.dtype)
    f2 = testbed.cycle_forecast(testbed.cycle_forecast(x2))
    f1 = testbed.cycle_forecast(x1)
    return jnp.cov(f2 - f1, rowvar=False).astype(s.dtype)


def matrix_sqrt(b: jax.Array) -> jax.Array:
    """Symmetric square root L of a covariance, B = L Lᵀ (eigenvalues clipped at 0)."""
    lam, v = jnp.linalg.eigh(b)
    return (v * jnp.sqrt(jnp.maximum(lam, 0.0))) @ v.T


def exact_increment(b: jax.Array, xb: jax.Array, obs: Observations) -> jax.Array:
    """δx = B Hᵀ (H B Hᵀ + R)⁻¹ (y − H(x_b)), H the Jacobian at x_b."""
    hx = obs.h(xb)
    hjac = jax.jacfwd(obs.h)(xb)  # (p, n)
    bht = b @ hjac.T
    s = hjac @ bht + jnp.diag(obs.r_std**2)
    return bht @ jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(s), obs.y - hx)


def conjugate_gradients(
    op, rhs: jax.Array, tol: float, maxiter: int
) -> tuple[jax.Array, jax.Array]:
    """Solve A v = b for a symmetric positive definite A given as a function, by conjugate
    gradients (Hestenes & Stiefel 1952) from v = 0: stops when ‖b − A v‖ ≤ tol ‖b‖ or after
    ``maxiter`` iterations. Returns v and the number of iterations."""
    stop = (tol * jnp.linalg.norm(rhs)) ** 2

    def step(state):
        v, r, p, rr, k = state
        ap = op(p)
        alpha = rr / jnp.vdot(p, ap)
        v, r = v + alpha * p, r - alpha * ap
        rr_new = jnp.vdot(r, r)
        return v, r, r + (rr_new / rr) * p, rr_new, k + 1

    def going(state):
        return (state[3] > stop) & (state[4] < maxiter)

    rr = jnp.vdot(rhs, rhs)
    v, *_, k = jax.lax.while_loop(going, step, (jnp.zeros_like(rhs), rhs, rhs, rr, jnp.asarray(0)))
    return v, k


def cg_increment(
    sqrt, sqrt_t, xb: jax.Array, obs: Observations, tol: float, maxiter: int
) -> tuple[jax.Array, jax.Array]:
    """δx = U v with (I + Uᵀ Hᵀ R⁻¹ H U) v = Uᵀ Hᵀ R⁻¹ d solved by CG, for B = U Uᵀ given as
    the functions ``sqrt`` (v ↦ U v) and ``sqrt_t`` (δx ↦ Uᵀ δx). Returns δx and the CG
    iterations."""
    hx, h_jvp = jax.linearize(obs.h, xb)
    h_vjp = jax.linear_transpose(h_jvp, xb)
    rinv = 1.0 / obs.r_std**2

    def normal_op(v):
        return v + sqrt_t(h_vjp(rinv * h_jvp(sqrt(v)))[0])

    rhs = sqrt_t(h_vjp(rinv * (obs.y - hx))[0])
    v, iterations = conjugate_gradients(normal_op, rhs, tol, maxiter)
    return sqrt(v), iterations
