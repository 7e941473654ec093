"""The built-in methods: importing this module registers each of them by its name.

The experiment layer imports it (``ensda.config``), so the core (``ensda.assimilator``)
never imports a method. A new method is a module with an ``@register``-ed class and one
line here.
"""

import baselines  # noqa: F401  (3dvar, climatology, control, enkf, etkf, letkf, none, oi)
import ensda.diffusion.anchored  # noqa: F401  (ens-diffusion)
import ensda.diffusion.diffda  # noqa: F401  (diffusion)
import ensda.diffusion.ensf  # noqa: F401  (ensf)
