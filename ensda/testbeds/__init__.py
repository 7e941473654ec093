"""Testbeds: a state space, its dynamics and its grid geometry."""

from ensda.testbeds.lorenz96 import Lorenz96, RingGrid

__all__ = ["Lorenz96", "RingGrid"]
