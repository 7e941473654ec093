"""ensda: ensemble-based, probabilistic data assimilation with diffusion models.

The core (testbeds, observation networks, the cycled OSSE runner, metrics, tracking)
lives here; the classic methods live in the top-level package ``baselines``.
"""

__version__ = "0.1.0"
