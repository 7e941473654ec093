r"""3D-Var with a static background-error covariance B.

Minimises J(x) = ½ (x − x_b)ᵀ B⁻¹ (x − x_b) + ½ (y − H(x))ᵀ R⁻¹ (y − H(x)), with H
linearised at x_b (one outer loop). Two solvers of the same linear problem:

- ``exact`` (small n): observation-space gain, δx = B Hᵀ (H B Hᵀ + R)⁻¹ d, by Cholesky;
- ``cg`` (large n): control variable x = x_b + L v with B = L Lᵀ, solve
  (I + Lᵀ Hᵀ R⁻¹ H L) v = Lᵀ Hᵀ R⁻¹ d by conjugate gradients (matrix-free, H through
  jvp / vjp), which is B-preconditioned CG.

B = ``scale`` · B₀ with B₀ the climatological covariance (from attractor samples) or an
NMC-style covariance of differences between 2-cycle and 1-cycle forecasts valid at the
same time (Parrish & Derber 1992). Deterministic: one member (or all members moved alike).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import jax
import jax.numpy as jnp
from pydantic import Field

from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static

#: above this state size ``solver='auto'`` picks conjugate gradients
EXACT_MAX_N = 1000


def climatological_covariance(samples: jax.Array) -> jax.Array:
    """Sample covariance of attractor states ``(S, n)``."""
    return jnp.cov(samples, rowvar=False).astype(samples.dtype)


def nmc_covariance(testbed, samples: jax.Array, key: jax.Array, init_std: float, max_pairs: int = 4000) -> jax.Array:
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


def cg_increment(l_sqrt: jax.Array, xb: jax.Array, obs: Observations, tol: float, maxiter: int) -> jax.Array:
    """δx = L v with (I + Lᵀ Hᵀ R⁻¹ H L) v = Lᵀ Hᵀ R⁻¹ d solved by CG."""
    hx, h_jvp = jax.linearize(obs.h, xb)
    h_vjp = jax.linear_transpose(h_jvp, xb)
    rinv = 1.0 / obs.r_std**2

    def normal_op(v):
        return v + l_sqrt.T @ h_vjp(rinv * h_jvp(l_sqrt @ v))[0]

    rhs = l_sqrt.T @ h_vjp(rinv * (obs.y - hx))[0]
    v, _ = jax.scipy.sparse.linalg.cg(normal_op, rhs, tol=tol, maxiter=maxiter)
    return l_sqrt @ v


@register
@pytree_dataclass
class ThreeDVar:
    b: jax.Array | None = None  # scaled B
    b_sqrt: jax.Array | None = None  # L with B = L Lᵀ (for CG)
    b_source: Literal["climatology", "nmc"] = static("climatology")
    scale: Annotated[float, Field(gt=0)] = static(0.05)
    solver: Literal["auto", "exact", "cg"] = static("auto")
    nmc_init_std: Annotated[float, Field(ge=0)] = static(0.3)
    cg_tol: Annotated[float, Field(gt=0)] = static(1e-5)
    cg_maxiter: Annotated[int, Field(ge=1)] = static(200)

    name: ClassVar[str] = "3dvar"
    ensemble: ClassVar[bool] = False

    @classmethod
    def build(cls, ctx, b_source="climatology", scale=0.05, solver="auto", nmc_init_std=0.3, cg_tol=1e-5, cg_maxiter=200):
        if b_source == "climatology":
            b0 = climatological_covariance(ctx.climatology)
        else:
            b0 = nmc_covariance(ctx.testbed, ctx.climatology, jax.random.fold_in(ctx.key, 3), nmc_init_std)
        b = scale * b0
        if solver == "auto":
            solver = "exact" if b.shape[0] <= EXACT_MAX_N else "cg"
        return cls(
            b=b if solver == "exact" else None,
            b_sqrt=matrix_sqrt(b) if solver == "cg" else None,
            b_source=b_source, scale=scale, solver=solver,
            nmc_init_std=nmc_init_std, cg_tol=cg_tol, cg_maxiter=cg_maxiter,
        )

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        xb = background.mean(0)
        if self.solver == "exact":
            dx = exact_increment(self.b, xb, obs)
        else:
            dx = cg_increment(self.b_sqrt, xb, obs, self.cg_tol, self.cg_maxiter)
        return background + dx
