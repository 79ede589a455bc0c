"""Layer 3 — files: the dataset contract shared by ``synth`` and training
(:mod:`~vnumba.io.dataset`), model files and the shipped models (:mod:`~vnumba.io.models`),
images (:mod:`~vnumba.io.images`) and the one atomic writer with the output-safety rules
(:mod:`~vnumba.io.outputs`).  Imports the layers below."""
