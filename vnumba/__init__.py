"""vnumba — coupled variational networks for joint denoising and segmentation of
stained tissue images (Effland et al. 2019), written as explicit NumPy/Numba code."""

__version__ = "0.1.0"
