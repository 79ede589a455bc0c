"""Stochastic generator of synthetic training data (Effland et al. 2019, "Stochastic generation
of training data").

A *scenario script* (TOML, see :mod:`synth.script`) describes every image feature; a registered
generator turns it into layers (:mod:`synth.layers`), merges them into a noisy image, a clean
image and a target mask (:mod:`synth.generator`), and :mod:`synth.writer` stores many samples in
an HDF5 file.  See ``docs/synth.md``.
"""

__version__ = "0.1.0"

#: Stored in every dataset's attrs; bump when the same script and seed give different pixels.
GENERATOR_VERSION = "synth-1"

__all__ = ["__version__", "GENERATOR_VERSION"]
