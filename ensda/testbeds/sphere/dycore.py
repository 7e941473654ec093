r"""Spectral dynamical cores (the ``dinosaur`` package) and their output in ERA5 variables.

Two models, one interface (``initial_state``, ``perturb``, ``fields``, ``from_fields``,
``steps_per``):

- ``HeldSuarez``: dry hydrostatic primitive equations on σ levels (vorticity, divergence,
  T', ln p_s) with the Held & Suarez (1994) forcing — Newtonian relaxation of T towards
  T_eq(φ, p) with k_T = 1/40 d⁻¹ aloft to 1/4 d⁻¹ at the equatorial surface, Rayleigh
  drag k_v = k_f max(0, (σ − 0.7)/0.3) with k_f = 1 d⁻¹ — flat lower boundary, started
  from an isothermal (288 K) atmosphere at rest with p_s = 1000 hPa plus 0.1 K of
  seeded noise in T. Time stepping: IMEX SIL3 (Whitaker & Kar 2013) with dinosaur's
  exponential spectral filter; dt = 20 min at T42. The circulation needs ~100–200 days
  from rest to reach its statistically steady, baroclinically unstable (chaotic) state.
- ``ShallowWater``: one-layer shallow water on the sphere with the barotropically
  unstable mid-latitude jet of Galewsky et al. (2004) (mean depth 10 km, jet maximum
  80 m/s, a seeded 120 m height bump); cheap (~5× less than Held–Suarez), for tests of
  the data pipeline. Its flow decays after the instability: twin errors grow ~200× in a
  week and then stall, so it has no statistically steady chaotic climate; the chaos check
  runs on Held–Suarez.

Units: dinosaur works non-dimensionally (radius 1, time 1/(2Ω)); ``fields`` returns SI.

Output (``fields``), per time: spectral truncation to the analysis grid and exact
evaluation at its points (``spectral``), then, Held–Suarez only, vertical interpolation
from σ levels to pressure levels, column by column, linear in ln p:

- temperature, u, v: interpolated between the σ-level centres p = σ_k p_s; constant
  beyond the top and bottom centres;
- geopotential: Φ at the σ-level centres (dinosaur's hydrostatic integral from Φ_s = 0)
  plus the surface (p = p_s, Φ = 0) as knots; above the top centre and below the surface
  it is extended hydrostatically, Φ = Φ_k − R T_k ln(p / p_k), with the temperature of the
  nearest layer.
"""

from __future__ import annotations

import dataclasses
import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ensda.testbeds.sphere import spectral
from ensda.testbeds.sphere.grid import LatLonGrid

#: ERA5 / WeatherBench 2 names of the variables on pressure levels and at the surface
PRESSURE_LEVEL_VARIABLES = (
    "geopotential",
    "temperature",
    "u_component_of_wind",
    "v_component_of_wind",
)
SURFACE_VARIABLES = ("surface_pressure",)


@dataclasses.dataclass(frozen=True)
class Output:
    """Where a model's state is written: the lat–lon grid and the pressure levels (hPa)."""

    grid: LatLonGrid
    levels: tuple[int, ...] = (500,)


def _units():
    from dinosaur import scales

    return scales.units


@dataclasses.dataclass(frozen=True)
class _Dycore:
    resolution: str = "T42"
    dt_minutes: float = 20.0

    @functools.cached_property
    def horizontal(self):
        from dinosaur import spherical_harmonic

        return getattr(spherical_harmonic.Grid, self.resolution)()

    @property
    def truncation(self) -> int:
        return int(self.resolution[1:])

    @functools.cached_property
    def specs(self):
        from dinosaur import primitive_equations

        return primitive_equations.PrimitiveEquationsSpecs.from_si()

    @functools.cached_property
    def dt(self) -> float:
        """Time step (nondimensional)."""
        return float(self.specs.nondimensionalize(self.dt_minutes * _units().minute))

    def steps_per(self, hours: float) -> int:
        """Number of model steps in ``hours`` (must be a whole number)."""
        steps = hours * 60.0 / self.dt_minutes
        if abs(steps - round(steps)) > 1e-9 or round(steps) < 1:
            raise ValueError(f"{hours} h is not a whole number of {self.dt_minutes}-minute steps")
        return round(steps)

    def _si(self, unit: str) -> float:
        """Factor from nondimensional values to ``unit`` (a pint unit string)."""
        return float(self.specs.dimensionalize(1.0, _units()(unit)).magnitude)

    @functools.cached_property
    def step(self):
        """One model step ``state -> state`` (pure; dinosaur IMEX SIL3 + exponential filter)."""
        from dinosaur import time_integration

        with (
            jax.ensure_compile_time_eval()
        ):  # constants concrete even when first built inside a trace
            step = time_integration.imex_rk_sil3(self.equation, self.dt)
            filters = [time_integration.exponential_step_filter(self.horizontal, self.dt)]
            return time_integration.step_with_filters(step, filters)

    def output_truncation(self, grid: LatLonGrid) -> int:
        return min(self.truncation, grid.truncation)


@dataclasses.dataclass(frozen=True)
class HeldSuarez(_Dycore):
    """Held–Suarez primitive equations on ``layers`` equidistant σ levels (module docstring)."""

    layers: int = 8
    #: std (K) of the seeded noise added to the isothermal rest state
    init_noise_k: float = 0.1

    @functools.cached_property
    def coords(self):
        from dinosaur import coordinate_systems, sigma_coordinates

        return coordinate_systems.CoordinateSystem(
            self.horizontal, sigma_coordinates.SigmaCoordinates.equidistant(self.layers)
        )

    @functools.cached_property
    def _rest(self):
        from dinosaur import primitive_equations_states, xarray_utils

        u = _units()
        init_fn, aux = primitive_equations_states.isothermal_rest_atmosphere(
            self.coords, self.specs, tref=288.0 * u.degK, p0=1e5 * u.pascal, p1=0.0 * u.pascal
        )
        return init_fn, np.asarray(aux[xarray_utils.REF_TEMP_KEY]), aux[xarray_utils.OROGRAPHY]

    @property
    def reference_temperature(self) -> np.ndarray:
        return self._rest[1]

    @functools.cached_property
    def equation(self):
        from dinosaur import held_suarez, primitive_equations, time_integration

        orography = primitive_equations.truncated_modal_orography(self._rest[2], self.coords)
        dyn = primitive_equations.PrimitiveEquationsSigma(
            self.reference_temperature, orography, self.coords, self.specs
        )
        forcing = held_suarez.HeldSuarezForcingSigma(
            self.coords, self.specs, self.reference_temperature
        )
        return time_integration.compose_equations([dyn, forcing])

    def initial_state(self, key: jax.Array):
        """Isothermal atmosphere at rest plus ``init_noise_k`` K of noise in T (seeded)."""
        state = self._rest[0](jax.random.PRNGKey(0))
        return self.perturb(state, key, self.init_noise_k)

    def perturb(self, state, key: jax.Array, amplitude_k: float):
        """``state`` plus Gaussian noise of std ``amplitude_k`` kelvin in the grid-point
        temperature."""
        h = self.horizontal
        noise = (
            amplitude_k
            / self._si("kelvin")
            * jax.random.normal(key, (self.layers,) + h.nodal_shape, jnp.float32)
        )
        return dataclasses.replace(
            state,
            temperature_variation=state.temperature_variation
            + h.clip_wavenumbers(h.to_modal(noise)),
        )

    def fields(self, state, out: Output) -> dict[str, jax.Array]:
        """ERA5 variables on ``out``: 3-D ones ``(level, lat, lon)``, surface ones
        ``(lat, lon)``, SI."""
        from dinosaur import primitive_equations

        t = self.output_truncation(out.grid)
        temp = self.reference_temperature[:, None, None] + spectral.evaluate(
            state.temperature_variation, out.grid, t
        )
        lnps = spectral.evaluate(state.log_surface_pressure, out.grid, t)[0]
        u, v = spectral.evaluate_winds(state.vorticity, state.divergence, out.grid, t)
        phi = primitive_equations.get_geopotential_on_sigma(
            temp,
            nodal_orography=jnp.zeros(out.grid.shape),
            sigma=self.coords.vertical,
            gravity_acceleration=self.specs.g,
            ideal_gas_constant=self.specs.R,
        )
        ps = jnp.exp(lnps) * self._si("pascal")
        temp = temp * self._si("kelvin")
        phi = phi * self._si("m**2/s**2")
        wind = self._si("m/s")
        r_dry = self.specs.R * self._si("m**2/s**2") / self._si("kelvin")
        levels_pa = jnp.asarray(out.levels, jnp.float32) * 100.0
        log_sigma = np.log(self.coords.vertical.centers)
        x = jnp.log(levels_pa[:, None, None] / ps)  # ln(p / p_s) of each level in each column
        return {
            "geopotential": geopotential_to_pressure(x, log_sigma, phi, temp, r_dry),
            "temperature": interp_columns(x, log_sigma, temp),
            "u_component_of_wind": interp_columns(x, log_sigma, u * wind),
            "v_component_of_wind": interp_columns(x, log_sigma, v * wind),
            "surface_pressure": ps,
        }

    def from_fields(self, f: dict[str, jax.Array], out: Output):
        """A dycore state from ERA5 variables on ``out`` (the inverse of ``fields``).

        T, u, v on the σ levels of each column are the least-squares solution of the
        σ → pressure interpolation of ``fields`` (``invert_columns``: exact when the pressure
        levels resolve the σ levels, e.g. the 13 WeatherBench 2 levels and 8 σ levels), then
        fitted with the degree-T series of the grid (``spectral.analyse``, ``analyse_winds``);
        ln p_s likewise.
        Geopotential is diagnostic (hydrostatic) and not used. Coefficients above the grid's
        truncation are zero.
        """
        from dinosaur import primitive_equations

        t, g = self.output_truncation(out.grid), out.grid
        x = jnp.log(
            jnp.asarray(out.levels, jnp.float32)[:, None, None] * 100.0 / f["surface_pressure"]
        )
        log_sigma = np.log(self.coords.vertical.centers)
        temp = invert_columns(x, log_sigma, f["temperature"]) / self._si("kelvin")
        wind = self._si("m/s")
        u = invert_columns(x, log_sigma, f["u_component_of_wind"]) / wind
        v = invert_columns(x, log_sigma, f["v_component_of_wind"]) / wind
        vort, div = spectral.analyse_winds(u, v, g, t)
        lnps = jnp.log(f["surface_pressure"] / self._si("pascal"))[None]
        pad = partial(spectral.truncate, truncation=self.truncation)
        return primitive_equations.State(
            vorticity=pad(vort),
            divergence=pad(div),
            temperature_variation=pad(
                spectral.analyse(temp - self.reference_temperature[:, None, None], g, t)
            ),
            log_surface_pressure=pad(spectral.analyse(lnps, g, t)),
        )


@dataclasses.dataclass(frozen=True)
class ShallowWater(_Dycore):
    """One-layer shallow water with the Galewsky et al. (2004) unstable jet (module docstring)."""

    @functools.cached_property
    def coords(self):
        from dinosaur import coordinate_systems, layer_coordinates

        return coordinate_systems.CoordinateSystem(
            self.horizontal, layer_coordinates.LayerCoordinates(1)
        )

    @functools.cached_property
    def _setup(self):
        from dinosaur import shallow_water_states, xarray_utils

        init_fn, aux = shallow_water_states.barotropic_instability_tc(self.coords, self.specs)
        return init_fn, np.asarray(aux[xarray_utils.REF_POTENTIAL_KEY])

    @functools.cached_property
    def equation(self):
        from dinosaur import shallow_water

        return shallow_water.ShallowWaterEquations(
            self.coords,
            self.specs,
            orography=np.zeros(self.horizontal.modal_shape),
            reference_potential=self._setup[1],
        )

    def initial_state(self, key: jax.Array):
        """The balanced jet plus the height bump at a seeded latitude within the jet."""
        return self._setup[0](key)

    def perturb(self, state, key: jax.Array, amplitude_m: float):
        """``state`` plus Gaussian noise of std ``amplitude_m`` metres in the layer depth."""
        h = self.horizontal
        noise = (
            amplitude_m
            * self.specs.g
            / self._si("m")
            * jax.random.normal(key, (1,) + h.nodal_shape, jnp.float32)
        )
        return dataclasses.replace(
            state, potential=state.potential + h.clip_wavenumbers(h.to_modal(noise))
        )

    def fields(self, state, out: Output) -> dict[str, jax.Array]:
        """Geopotential g·h and winds ``(1, lat, lon)`` (SI) on the single nominal level of
        ``out``."""
        if len(out.levels) != 1:
            raise ValueError(f"the shallow-water model has one level, got {out.levels}")
        t = self.output_truncation(out.grid)
        phi = self._setup[1][:, None, None] + spectral.evaluate(state.potential, out.grid, t)
        u, v = spectral.evaluate_winds(state.vorticity, state.divergence, out.grid, t)
        wind = self._si("m/s")
        return {
            "geopotential": phi * self._si("m**2/s**2"),
            "u_component_of_wind": u * wind,
            "v_component_of_wind": v * wind,
        }

    def from_fields(self, f: dict[str, jax.Array], out: Output):
        """A dycore state from geopotential and winds on ``out`` (the inverse of ``fields``)."""
        from dinosaur import shallow_water

        t, g = self.output_truncation(out.grid), out.grid
        wind = self._si("m/s")
        vort, div = spectral.analyse_winds(
            f["u_component_of_wind"] / wind, f["v_component_of_wind"] / wind, g, t
        )
        phi = f["geopotential"] / self._si("m**2/s**2") - self._setup[1][:, None, None]
        pad = partial(spectral.truncate, truncation=self.truncation)
        return shallow_water.State(
            vorticity=pad(vort), divergence=pad(div), potential=pad(spectral.analyse(phi, g, t))
        )


def interp_columns(x: jax.Array, knots: np.ndarray, f: jax.Array) -> jax.Array:
    """Piecewise-linear interpolation along the first axis, column by column.

    x: ``(P, lat, lon)`` targets; knots: ``(K,)`` increasing, the same in every column;
    f: ``(K, lat, lon)`` values at the knots. Constant beyond the end knots.
    """
    knots = jnp.asarray(knots, x.dtype)
    k = knots.shape[0]
    hi = jnp.clip(jnp.searchsorted(knots, x), 1, k - 1)
    lo = hi - 1
    w = jnp.clip((x - knots[lo]) / (knots[hi] - knots[lo]), 0.0, 1.0)
    f_lo = jnp.take_along_axis(f, lo, axis=0)
    f_hi = jnp.take_along_axis(f, hi, axis=0)
    return f_lo + w * (f_hi - f_lo)


def interp_weights(x: jax.Array, knots: np.ndarray) -> jax.Array:
    """The matrix ``W (P, K, lat, lon)`` of ``interp_columns``:
    interp_columns(x, knots, f) = Σ_k W[:, k] f[k]."""
    knots = jnp.asarray(knots, x.dtype)
    k = knots.shape[0]
    hi = jnp.clip(jnp.searchsorted(knots, x), 1, k - 1)
    lo = hi - 1
    w = jnp.clip((x - knots[lo]) / (knots[hi] - knots[lo]), 0.0, 1.0)
    return (1 - w)[:, None] * jax.nn.one_hot(lo, k, axis=1) + w[:, None] * jax.nn.one_hot(
        hi, k, axis=1
    )


def invert_columns(x: jax.Array, knots: np.ndarray, y: jax.Array, ridge: float = 1e-5) -> jax.Array:
    """Knot values ``f (K, lat, lon)`` whose interpolation (``interp_columns``) at ``x`` best
    matches ``y (P, lat, lon)``: per column, f = (WᵀW + ridge·I)⁻¹ Wᵀ y. Exact for y in the
    range of W when W has full column rank (every knot seen by some target); the small ridge
    keeps a column solvable when a knot is not."""
    w = jnp.moveaxis(interp_weights(x, knots), (0, 1), (-2, -1))  # (lat, lon, P, K)
    wtw = jnp.einsum("...pk,...pq->...kq", w, w) + ridge * jnp.eye(w.shape[-1], dtype=w.dtype)
    wty = jnp.einsum("...pk,...p->...k", w, jnp.moveaxis(y, 0, -1))
    return jnp.moveaxis(spd_solve(wtw, wty), -1, 0)


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """x with a x = b for a batch of small symmetric positive-definite ``a (..., K, K)``,
    ``b (..., K)``: Cholesky a = L Lᵀ (Cholesky–Banachiewicz, column by column), then
    forward and back substitution, in elementwise JAX ops unrolled over K.

    Not ``jnp.linalg.solve``: its batched LAPACK kernels split the batch over the XLA CPU
    thread pool from inside a pool thread, and when the thunk executor runs two such
    solves at once on a 2-core machine every pool thread waits for work none is free to
    do (jaxlib 0.10.2: a deadlock in ``jax::ParallelBatchMap``, seen in cycled sphere runs).
    K is the number of σ layers (≤ a few tens), so unrolling costs little.
    """
    k = a.shape[-1]
    cols = []  # columns of L: cols[j] = L[..., :, j]
    for j in range(k):
        done = (
            jnp.stack(cols, axis=-1) if cols else jnp.zeros(a.shape[:-1] + (0,), a.dtype)
        )  # (..., K, j)
        col = a[..., :, j] - jnp.einsum("...ij,...j->...i", done, done[..., j, :])
        diag = jnp.sqrt(col[..., j])
        col = jnp.where(jnp.arange(k) < j, 0.0, col / diag[..., None])
        cols.append(col)
    lower = jnp.stack(cols, axis=-1)  # (..., K, K)
    z = []
    for i in range(k):  # L z = b
        acc = sum((lower[..., i, m] * z[m] for m in range(i)), jnp.zeros_like(b[..., i]))
        z.append((b[..., i] - acc) / lower[..., i, i])
    x = [None] * k
    for i in reversed(range(k)):  # Lᵀ x = z
        acc = sum((lower[..., m, i] * x[m] for m in range(i + 1, k)), jnp.zeros_like(b[..., i]))
        x[i] = (z[i] - acc) / lower[..., i, i]
    return jnp.stack(x, axis=-1)


def geopotential_to_pressure(
    x: jax.Array, log_sigma: np.ndarray, phi: jax.Array, temp: jax.Array, r_dry: float
) -> jax.Array:
    """Geopotential at ln(p/p_s) = ``x`` from σ-level values (see the module docstring).

    Knots: ln σ_k with Φ_k, and the surface (ln σ = 0, Φ = 0); hydrostatic beyond them:
    Φ = Φ_top − R T_top (x − ln σ_top) above, Φ = −R T_bottom x below the surface.
    """
    knots = np.concatenate([log_sigma, [0.0]])
    values = jnp.concatenate([phi, jnp.zeros_like(phi[:1])], axis=0)
    inside = interp_columns(x, knots, values)
    above = phi[0] - r_dry * temp[0] * (x - knots[0])
    below = -r_dry * temp[-1] * x
    return jnp.where(x < knots[0], above, jnp.where(x > 0.0, below, inside))


@partial(jax.jit, static_argnums=(0, 2, 3, 4))
def integrate(model: _Dycore, state, n_out: int, steps_per_out: int, out: Output | None):
    """Advance ``n_out × steps_per_out`` steps; returns the final state and, with ``out``, the
    fields after each block of ``steps_per_out`` steps stacked on a leading time axis."""

    def block(s, _):
        s = jax.lax.fori_loop(0, steps_per_out, lambda _, x: model.step(x), s)
        return s, (model.fields(s, out) if out is not None else None)

    return jax.lax.scan(block, state, None, length=n_out)


def make_model(
    kind: str, resolution: str = "T42", dt_minutes: float = 20.0, layers: int = 8
) -> _Dycore:
    """The dycore named ``kind`` (``held_suarez`` or ``shallow_water``)."""
    if kind == "held_suarez":
        return HeldSuarez(resolution=resolution, dt_minutes=dt_minutes, layers=layers)
    if kind == "shallow_water":
        return ShallowWater(resolution=resolution, dt_minutes=dt_minutes)
    raise ValueError(f"unknown sphere model {kind!r}: held_suarez or shallow_water")
