"""Classic data assimilation baselines, each implementing ``ensda.assimilator.Assimilator``.

Importing this package registers every method by its CLI name.
"""

from baselines.climatology import Climatology, FreeRun
from baselines.enkf import StochasticEnKF
from baselines.ensrf import EnSRF
from baselines.etkf import ETKF
from baselines.letkf import LETKF
from baselines.oi import OptimalInterpolation
from baselines.threedvar import ThreeDVar

__all__ = [
    "Climatology",
    "EnSRF",
    "ETKF",
    "FreeRun",
    "LETKF",
    "OptimalInterpolation",
    "StochasticEnKF",
    "ThreeDVar",
]
