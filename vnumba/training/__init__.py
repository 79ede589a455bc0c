"""Layer 4 — training: Adam over the unrolled network or the U-Net with checkpoints, resume
and logs (:mod:`~vnumba.training.trainer`, typed :class:`~vnumba.training.trainer.TrainOptions`).
Imports the layers below, never ``synth``."""
