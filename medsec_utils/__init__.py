"""medsec_utils: the thin library behind the medsec compendium.

One module per concern: ``data`` (DATASET specs to tensors), ``phantoms`` (built-in images),
``models``, ``training``, ``attacks``, ``defenses``, ``generative``, ``reader_study``, ``baselines``,
``replacement``, ``metrics``, ``cache``, ``reporting`` and ``profiles``. Submodules are
imported explicitly (``from medsec_utils import data``) so that importing the package stays cheap.
"""

__version__ = "0.1.0"
