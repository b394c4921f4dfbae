"""reaudio: retrieval-augmented text-to-audio generation (Re-AudioLDM) as software.

Packages, each importing only those before it: ``engine`` (the torch-free runtime), ``models``
(torch modules), ``export`` (models to bundles), ``training`` (data, training, evaluation).
"""

__version__ = "0.1.0"
