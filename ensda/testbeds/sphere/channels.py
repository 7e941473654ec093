"""The channels of a sphere state: its pressure-level variables × levels, then its surface
variables (ERA5 / WeatherBench 2 names), in state order (``Channels``)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ensda.testbeds.sphere.dycore import PRESSURE_LEVEL_VARIABLES, SURFACE_VARIABLES

#: the pressure (hPa) a surface variable counts at in vertical distances
SURFACE_HPA = 1000.0


@dataclasses.dataclass(frozen=True)
class Channels:
    """The variables × levels of a state, in channel order (module docstring)."""

    variables: tuple[str, ...] = PRESSURE_LEVEL_VARIABLES
    levels: tuple[int, ...] = (500,)
    surface: tuple[str, ...] = SURFACE_VARIABLES

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{v}_{lv}" for v in self.variables for lv in self.levels) + self.surface

    @property
    def n(self) -> int:
        return len(self.variables) * len(self.levels) + len(self.surface)

    def index(self, variable: str, level: int | None = None) -> int:
        """Channel of ``variable`` at ``level`` (hPa; None for a surface variable)."""
        if level is None:
            if variable not in self.surface:
                raise KeyError(
                    f"{variable!r} is not a surface variable of this state ({self.surface})"
                )
            return len(self.variables) * len(self.levels) + self.surface.index(variable)
        if variable not in self.variables or level not in self.levels:
            raise KeyError(
                f"no channel {variable}_{level} (variables {self.variables}, levels {self.levels})"
            )
        return self.variables.index(variable) * len(self.levels) + self.levels.index(level)

    @property
    def pressures(self) -> tuple[float, ...]:
        """Pressure (hPa) of each channel, surface variables at ``SURFACE_HPA`` (for
        vertical localisation and correlations in ln p)."""
        return tuple(
            float(self.levels[c % len(self.levels)])
            if self.variable(c) in self.variables
            else SURFACE_HPA
            for c in range(self.n)
        )

    def variable(self, channel: int) -> str:
        """The variable of ``channel``."""
        n3d = len(self.variables) * len(self.levels)
        return (
            self.variables[channel // len(self.levels)]
            if channel < n3d
            else self.surface[channel - n3d]
        )

    def stack(self, fields: dict) -> jax.Array:
        """``{name: (..., level, lat, lon) or (..., lat, lon)}`` → state ``(..., n, lat, lon)``."""
        parts = [fields[v] for v in self.variables] + [
            fields[s][..., None, :, :] for s in self.surface
        ]
        return jnp.concatenate(parts, axis=-3)

    def unstack(self, x: jax.Array) -> dict:
        """State ``(..., n, lat, lon)`` → ``{name: (..., level, lat, lon) or (..., lat, lon)}``."""
        nl = len(self.levels)
        out = {v: x[..., i * nl : (i + 1) * nl, :, :] for i, v in enumerate(self.variables)}
        base = len(self.variables) * nl
        out.update({s: x[..., base + i, :, :] for i, s in enumerate(self.surface)})
        return out

    @classmethod
    def of_dataset(cls, ds) -> Channels:
        """The channels of a store opened with ``store.open_store``: its variables and levels."""
        variables = tuple(v for v in PRESSURE_LEVEL_VARIABLES if v in ds.data_vars)
        surface = tuple(v for v in SURFACE_VARIABLES if v in ds.data_vars)
        levels = tuple(int(v) for v in ds["level"].values) if variables else ()
        return cls(variables, levels, surface)

    def states(self, ds) -> np.ndarray:
        """The states ``(time, [member,] n, lat, lon)`` float32 of a dataset with these
        variables (dims as ``store.normalise`` orders them; a ``member`` dim is kept)."""
        parts = [np.asarray(ds[v].values, np.float32) for v in self.variables]
        parts += [np.asarray(ds[s].values, np.float32)[..., None, :, :] for s in self.surface]
        return np.concatenate(parts, axis=-3)
