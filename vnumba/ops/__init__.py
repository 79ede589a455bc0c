"""Layer 0 — operators: the convolutions with their adjoints and kernel gradients, the RBF
activations, the projections onto the admissible set P, Adam, the loss (3), colour and mask
operators, and the private CPU kernels beneath them (:mod:`~vnumba.ops.fused`,
:mod:`~vnumba.ops.simd`).  Imports nothing else of vnumba."""
