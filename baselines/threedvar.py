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

**On the sphere** (a network of ``layout`` ``columns``, ``GlobalObsNetwork``) ``build``
returns a ``SphereThreeDVar`` (``baselines.threedvar_sphere``): B = Σ C Σ is an operator
(per-channel standard deviations, isotropic spherical-harmonic horizontal correlation of
``length_km``, exponential correlation in ln p of ``vertical_length`` between the levels of
a variable, or with ``balance`` the climatological correlation of all channels of a column)
and the analysis is the ``cg`` solve above with U = B^{1/2} applied matrix-free.
``length_km``, ``vertical_length``, ``sigma_by_latitude`` and ``balance`` are settings of
the sphere only; ``solver: exact`` is refused there."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import jax
from pydantic import Field

from baselines.threedvar_sphere import SphereThreeDVar
from baselines.variational import (
    cg_increment,
    climatological_covariance,
    exact_increment,
    matrix_sqrt,
    nmc_covariance,
)
from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static

#: above this state size ``solver='auto'`` picks conjugate gradients
EXACT_MAX_N = 1000


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
    #: sphere only: horizontal correlation length in km (null: 1000 km)
    length_km: Annotated[float, Field(gt=0)] | None = static(None)
    #: sphere only: correlation length between levels in ln p (null: levels uncorrelated)
    vertical_length: Annotated[float, Field(gt=0)] | None = static(None)
    #: sphere only: background-error std per channel and latitude (else per channel)
    sigma_by_latitude: bool = static(False)
    #: sphere only: correlations between the channels of a column (levels and variables)
    #: from the climatology, a statistical multivariate balance (replaces vertical_length)
    balance: bool = static(False)

    name: ClassVar[str] = "3dvar"
    ensemble: ClassVar[bool] = False

    @classmethod
    def build(
        cls,
        ctx,
        b_source="climatology",
        scale=0.05,
        solver="auto",
        nmc_init_std=0.3,
        cg_tol=1e-5,
        cg_maxiter=200,
        length_km=None,
        vertical_length=None,
        sigma_by_latitude=False,
        balance=False,
    ):
        if ctx.network.layout == "columns":
            if solver == "exact":
                raise ValueError(
                    "solver 'exact' needs a dense B; on the sphere B is an operator: use 'cg' (or "
                    "'auto')"
                )
            return SphereThreeDVar.build(
                ctx,
                b_source,
                scale,
                nmc_init_std,
                length_km,
                vertical_length,
                sigma_by_latitude,
                cg_tol,
                cg_maxiter,
                balance,
            )
        sphere_only = {
            "length_km": length_km,
            "vertical_length": vertical_length,
            "sigma_by_latitude": sigma_by_latitude,
            "balance": balance,
        }
        given = [k for k, v in sphere_only.items() if v not in (None, False)]
        if given:
            raise ValueError(f"{', '.join(given)} apply to the sphere testbed only")
        if b_source == "climatology":
            b0 = climatological_covariance(ctx.climatology)
        else:
            b0 = nmc_covariance(
                ctx.testbed, ctx.climatology, jax.random.fold_in(ctx.key, 3), nmc_init_std
            )
        b = scale * b0
        if solver == "auto":
            solver = "exact" if b.shape[0] <= EXACT_MAX_N else "cg"
        return cls(
            b=b if solver == "exact" else None,
            b_sqrt=matrix_sqrt(b) if solver == "cg" else None,
            b_source=b_source,
            scale=scale,
            solver=solver,
            nmc_init_std=nmc_init_std,
            cg_tol=cg_tol,
            cg_maxiter=cg_maxiter,
        )

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        xb = background.mean(0)
        if self.solver == "exact":
            dx = exact_increment(self.b, xb, obs)
        else:
            dx, _ = cg_increment(
                lambda v: self.b_sqrt @ v,
                lambda x: self.b_sqrt.T @ x,
                xb,
                obs,
                self.cg_tol,
                self.cg_maxiter,
            )
        return background + dx
