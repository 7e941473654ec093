"""The Lorenz-96 testbed: the model (``model``), its config sections (``config``) and its
plug-in (``plugin``: what the experiment layer asks of a testbed kind)."""

from ensda.testbeds.lorenz96.model import (
    HOURS_PER_TIME_UNIT,
    Lorenz96,
    RingGrid,
    rk4_step,
    tendency,
    trajectory,
)
from ensda.testbeds.lorenz96.plugin import LORENZ96

__all__ = [
    "HOURS_PER_TIME_UNIT",
    "LORENZ96",
    "Lorenz96",
    "RingGrid",
    "rk4_step",
    "tendency",
    "trajectory",
]
