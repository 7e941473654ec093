"""ensda: ensemble-based, probabilistic data assimilation with diffusion models.

The library in layers (docs/design.md §2): the core (states, observations, the assimilator
protocol and registry, inflation, the cycler, metrics, config base), the testbeds
(``ensda.testbeds``), the methods (``ensda.diffusion`` and the top-level package
``baselines``), the experiment layer (configs, OSSEs, sweeps, tuning, tracking, training)
and the command line (``ensda.cli``).
"""

__version__ = "0.1.0"
