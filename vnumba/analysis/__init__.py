"""Layer 4 — applying trained networks: tiled prediction on real images
(:mod:`~vnumba.analysis.inference`), objects and their CSV/GeoJSON
(:mod:`~vnumba.analysis.objects`), the classical baseline, the optional object filter,
evaluation against annotations and the figures.  Whole-slide analysis goes here.  Imports
the layers below, never ``synth``."""
