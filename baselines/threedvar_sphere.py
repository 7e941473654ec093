r"""3D-Var on the sphere: a static B = Σ C Σ applied as an operator, never formed.

Built by ``ThreeDVar.build`` when the network is a ``GlobalObsNetwork`` (states of
``n_var`` channels on the lat–lon columns, channel-major flat vectors). The model of B
follows the usual control-variable construction (Bannister 2008, QJRMS 134, §3–4;
Parrish & Derber 1992), with a statistical column balance at most (no balance operator):

    B = U Uᵀ,   U = Σ (V^{1/2} ⊗ S Λ^{1/2}),

- **Σ** (diagonal): the background-error standard deviation of each channel (optionally of
  each channel and latitude), √``scale`` times the standard deviation of climatological
  anomalies (``b_source: climatology``) or of NMC-style forecast differences (``nmc``),
  area-weighted (cos φ) over the grid (over longitude only with ``sigma_by_latitude``).
- **C_h = S Λ Sᵀ**: an isotropic horizontal correlation. S evaluates a triangular
  spherical-harmonic series at the grid points (``spectral.evaluate``, T = the grid's
  truncation), Λ = diag(λ_l) a Gaussian spectrum λ_l ∝ exp(−l(l + 1) L² / (2a²)) with
  L = ``length_km`` and a the Earth's radius (the heat kernel: c(r) ≈ exp(−r² / (2L²)) for
  L ≪ a). By the addition theorem C_h(i, j) = Σ_l λ_l (2l + 1)/(4π) P_l(cos θ_ij): it
  depends on the great-circle angle θ_ij only, is positive semi-definite, and has unit
  diagonal when Σ_l λ_l (2l + 1)/(4π) = 1 (the normalisation used).
- **V**: the correlation between the channels of one column: exp(−|ln p − ln p'|/
  ``vertical_length``) between the levels of the same variable (positive definite: an
  exponential kernel in ln p), 1 on the diagonal, 0 between different variables (no
  multivariate balance: geopotential, temperature and winds are uncorrelated in B); or,
  with ``balance``, the climatological correlation of all channel pairs of a column
  (``climatological_channel_correlation``: anomalies about each grid point's sample mean,
  pooled over the columns with cos φ weights), a statistical multivariate balance in the
  spirit of Parrish & Derber's regression balance: it couples levels and variables as the
  climate does (geopotential with temperature below it and with surface pressure), but
  not winds with the geopotential gradient (geostrophy is not a column relation).

The analysis minimises J(v) = ½ vᵀv + ½ |y − H(x_b + U v)|²_R⁻¹ (one outer loop, H
linearised at x_b): (I + Uᵀ Hᵀ R⁻¹ H U) v = Uᵀ Hᵀ R⁻¹ d by conjugate gradients
(``variational.cg_increment``; the B^{1/2} transform is the preconditioner), δx = U v. The
control vector v holds one set of spectral coefficients per channel.

NMC-style Σ on the sphere: the climatological samples are at random store times, not one
cycle apart, so the pair of forecasts valid at the same time starts from x and from M(x):
f₂ = M²(x + ε), f₁ = M(M(x) + ε'), ε, ε' white noise of std ``nmc_init_std`` times the
channel's climatological standard deviation; Σ is the standard deviation of f₂ − f₁ over
``NMC_SAMPLES`` samples.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from baselines.variational import cg_increment, matrix_sqrt
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static
from ensda.testbeds.sphere.grid import EARTH_RADIUS_KM, LatLonGrid
from ensda.testbeds.sphere.observe import GlobalObsNetwork
from ensda.testbeds.sphere.spectral import evaluate, evaluate_adjoint, modal_degrees
from ensda.testbeds.sphere.testbed import channel_std

#: horizontal correlation length (km) when ``length_km`` is not set
DEFAULT_LENGTH_KM = 1000.0
#: climatological samples forecast for the NMC-style standard deviations
NMC_SAMPLES = 16


def gaussian_spectrum(grid: LatLonGrid, truncation: int, length_km: float) -> np.ndarray:
    """λ^{1/2} per coefficient ``(2T + 1, T + 2)`` (0 where not a basis function) of the
    Gaussian spectrum λ_l ∝ exp(−l(l + 1) L² / (2a²)), l ≤ T, normalised so that
    Σ_l λ_l (2l + 1)/(4π) = 1 (unit variance at every point)."""
    l, m = modal_degrees(grid, truncation)
    degrees = np.arange(truncation + 1)
    lam = np.exp(-degrees * (degrees + 1) * (length_km / EARTH_RADIUS_KM) ** 2 / 2)
    lam /= np.sum(lam * (2 * degrees + 1) / (4 * np.pi))
    valid = (m <= l) & (l <= truncation)
    return np.where(valid, np.sqrt(lam[np.minimum(l, truncation)]), 0.0)


def vertical_correlation(network: GlobalObsNetwork, vertical_length: float | None) -> np.ndarray:
    """V ``(n_channels, n_channels)``: exp(−|Δ ln p| / ``vertical_length``) between channels of
    the same variable, 0 across variables, the identity when ``vertical_length`` is None."""
    ch = network.channels
    if vertical_length is None:
        return np.eye(ch.n)
    lnp = np.log(network.channels.pressures)
    same = np.array([[ch.variable(a) == ch.variable(b) for b in range(ch.n)] for a in range(ch.n)])
    return np.where(same, np.exp(-np.abs(lnp[:, None] - lnp[None, :]) / vertical_length), 0.0)


def climatological_channel_correlation(samples: jax.Array, grid: LatLonGrid) -> np.ndarray:
    r"""V ``(n_var, n_var)`` from climatological states ``(S, n_var, n_lat, n_lon)``:

    .. math:: V_{cd} = \frac{K_{cd}}{\sqrt{K_{cc} K_{dd}}},\quad
              K_{cd} = \sum_i w_i \sum_s a_{sci}\, a_{sdi},

    a the anomalies about each grid point's sample mean, w_i = cos φ_i. Positive
    semi-definite (a Gram matrix), unit diagonal."""
    x = np.asarray(samples, np.float64)
    a = x - x.mean(axis=0)
    w = np.asarray(grid.weights, np.float64)  # cos φ (their scale cancels in V)
    k = np.einsum("scij,sdij,ij->cd", a, a, w)
    d = np.sqrt(np.diag(k))
    return k / d[:, None] / d[None, :]


def nmc_differences(
    testbed, samples: jax.Array, key: jax.Array, clim_std: jax.Array, init_std: float
) -> jax.Array:
    """f₂ − f₁ = M²(x + ε) − M(M(x) + ε') for flat samples x ``(S, n)``; ε, ε' white noise of
    std ``init_std`` · ``clim_std`` (per element)."""
    k1, k2 = jax.random.split(key)
    x = samples[:NMC_SAMPLES]
    scale = init_std * clim_std.reshape(-1)
    f2 = testbed.forecast(x + scale * jax.random.normal(k1, x.shape, x.dtype), 2)
    f1 = testbed.cycle_forecast(
        testbed.cycle_forecast(x) + scale * jax.random.normal(k2, x.shape, x.dtype)
    )
    return f2 - f1


@pytree_dataclass
class SphereThreeDVar:
    """3D-Var with B = Σ (V ⊗ C_h) Σ on the sphere (module docstring); built by
    ``ThreeDVar.build`` for a ``GlobalObsNetwork``. States flat ``(N, n_var·n_lat·n_lon)``."""

    grid: LatLonGrid = static(None, setting=False)
    truncation: int = static(0, setting=False)
    cg_tol: float = static(1e-5, setting=False)
    cg_maxiter: int = static(200, setting=False)
    #: Σ: background-error std per channel and latitude ``(n_var, n_lat, 1)`` (scale included)
    sigma: jax.Array | None = None
    #: V^{1/2} ``(n_var, n_var)``, symmetric
    vertical_sqrt: jax.Array | None = None
    #: Λ^{1/2} per spectral coefficient ``(2T + 1, T + 2)``
    spectrum_sqrt: jax.Array | None = None

    name: ClassVar[str] = "3dvar"
    ensemble: ClassVar[bool] = False

    @classmethod
    def build(
        cls,
        ctx,
        b_source: str,
        scale: float,
        nmc_init_std: float,
        length_km: float | None,
        vertical_length: float | None,
        sigma_by_latitude: bool,
        cg_tol: float,
        cg_maxiter: int,
        balance: bool = False,
    ) -> SphereThreeDVar:
        network = ctx.network
        grid, n_var = network.grid, network.channels.n
        if balance and vertical_length is not None:
            raise ValueError(
                "3dvar: balance takes V (levels and variables) from the climatology; "
                "vertical_length applies without balance only: set one of them"
            )
        samples = ctx.climatology.reshape((-1, n_var) + grid.shape)
        sigma = channel_std(samples, grid, sigma_by_latitude)
        if b_source == "nmc":
            clim_std = jnp.broadcast_to(channel_std(samples, grid, False), (n_var,) + grid.shape)
            diffs = nmc_differences(
                ctx.testbed, ctx.climatology, jax.random.fold_in(ctx.key, 3), clim_std, nmc_init_std
            )
            sigma = channel_std(diffs.reshape((-1, n_var) + grid.shape), grid, sigma_by_latitude)
        t = grid.truncation
        length = DEFAULT_LENGTH_KM if length_km is None else length_km
        return cls(
            grid=grid,
            truncation=t,
            cg_tol=cg_tol,
            cg_maxiter=cg_maxiter,
            sigma=jnp.sqrt(scale) * sigma,
            vertical_sqrt=matrix_sqrt(
                jnp.asarray(
                    climatological_channel_correlation(samples, grid)
                    if balance
                    else vertical_correlation(network, vertical_length),
                    jnp.float32,
                )
            ),
            spectrum_sqrt=jnp.asarray(gaussian_spectrum(grid, t, length), jnp.float32),
        )

    def sqrt(self, v: jax.Array) -> jax.Array:
        """U v: control vector ``(n_var, 2T + 1, T + 2)`` → flat increment ``(n,)``."""
        fields = evaluate(
            self.spectrum_sqrt * v, self.grid, self.truncation
        )  # (n_var, n_lat, n_lon)
        return (self.sigma * jnp.einsum("cd,dij->cij", self.vertical_sqrt, fields)).reshape(-1)

    def sqrt_t(self, x: jax.Array) -> jax.Array:
        """Uᵀ x: flat ``(n,)`` → control vector ``(n_var, 2T + 1, T + 2)``."""
        fields = self.sigma * x.reshape(self.sigma.shape[:1] + self.grid.shape)
        fields = jnp.einsum("dc,dij->cij", self.vertical_sqrt, fields)
        return self.spectrum_sqrt * evaluate_adjoint(fields, self.grid, self.truncation)

    def covariance(self, x: jax.Array) -> jax.Array:
        """B x = U Uᵀ x for a flat state ``(n,)``."""
        return self.sqrt(self.sqrt_t(x))

    def increment(self, xb: jax.Array, obs: Observations) -> tuple[jax.Array, jax.Array]:
        """The analysis increment δx ``(n,)`` at background ``xb`` and the CG iterations."""
        n = self.sigma.shape[0] * self.grid.n
        if xb.shape[-1] != n:
            raise ValueError(
                f"3D-Var built for {self.sigma.shape[0]} channels x {self.grid.n} columns ({n}), "
                f"got a state of {xb.shape[-1]}"
            )
        return cg_increment(self.sqrt, self.sqrt_t, xb, obs, self.cg_tol, self.cg_maxiter)

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        dx, _ = self.increment(background.mean(0), obs)
        return background + dx
