"""The sphere testbed: a Held–Suarez (or shallow-water) nature run with the ``dinosaur``
dycore, written in the ERA5 / WeatherBench 2 layout on an equiangular lat–lon grid.

Modules: ``grid`` (the lat–lon grid, area weights, great-circle distances), ``config``
(the ``testbed: {kind: sphere}`` config section), ``spectral`` (truncation and evaluation
on the grid), ``dycore`` (the models and their output variables), ``store`` (the zarr
layout), ``nature`` (resumable generation), ``testbed`` (states as ``(n_var, n_lat, n_lon)``
arrays, their forecasts, truth and climatology from a store), ``climate`` (a store's
climate in numbers: jets, equator-to-pole temperature, mean surface pressure). Only ``grid`` and
``config`` are imported here:
``dinosaur`` takes seconds to import and is loaded where a model is built.
"""

from ensda.testbeds.sphere.config import SphereTestbedConfig
from ensda.testbeds.sphere.grid import LatLonGrid, great_circle_km

__all__ = ["LatLonGrid", "SphereTestbedConfig", "great_circle_km"]
