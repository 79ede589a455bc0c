"""The training loss (3) of the article, its normalisation and its gradient with respect to
the network outputs: the one definition that the variational network (CPU and GPU) and the
U-Net baseline share.

Loss of a batch of ``N`` images of ``H × W`` pixels (article eq. 3, divided by the batch size
and the pixel count so that it does not scale with either; ``docs/gradients.md`` §5)::

    L = 1/(N H W) Σ_s [ 1/6 ‖u_T^s − g_u^s‖² + 1/2 ‖m_T^s − g_m^s‖² ]
    ∂L/∂u_T = (u_T − g_u) / (3 N H W),     ∂L/∂m_T = (m_T − g_m) / (N H W)

:func:`loss_value_and_output_grad` computes both from NumPy arrays.  Code that reduces the
squared differences elsewhere (the CUDA loss kernel, which cannot call NumPy) takes its
constants from :func:`loss_scale`, :func:`output_grad_factors` and :func:`loss_from_sums`,
which :func:`loss_value_and_output_grad` uses too, so the formula's constants live here only.
"""
from __future__ import annotations

import numpy as np

from vnumba.ops.checks import check_array

__all__ = [
    "IMAGE_DIVISOR", "MASK_DIVISOR", "loss_scale", "output_grad_factors", "loss_from_sums",
    "loss_value_and_output_grad", "check_mask_weights",
]

#: The image term of loss (3) is ``‖u_T − g_u‖² / IMAGE_DIVISOR`` (the article's 1/6, which
#: accounts for the three colour channels).
IMAGE_DIVISOR = 6.0
#: The mask term of loss (3) is ``‖m_T − g_m‖² / MASK_DIVISOR`` (the article's 1/2).
MASK_DIVISOR = 2.0


def loss_scale(n_images, height, width) -> float:
    """Normalisation of loss (3): ``1 / (n_images · height · width)``.

    Parameters
    ----------
    n_images : int
        Images of the whole batch (not of a chunk of it).
    height, width : int
        Image size in pixels.

    Returns
    -------
    float
    """
    n_images, height, width = int(n_images), int(height), int(width)
    if n_images < 1 or height < 1 or width < 1:
        raise ValueError(f"batch size and image size must be >= 1, got {n_images} x {height} x {width}")
    return 1.0 / (n_images * height * width)


def output_grad_factors(scale) -> tuple:
    """Factors of the output gradients: ``∂L/∂u_T = f_u (u_T − g_u)``, ``∂L/∂m_T = f_m (m_T − g_m)``.

    Parameters
    ----------
    scale : float
        :func:`loss_scale` of the batch.

    Returns
    -------
    f_u, f_m : float
        ``2 scale / IMAGE_DIVISOR = scale / 3`` and ``2 scale / MASK_DIVISOR = scale``
        (computed as ``scale / (divisor / 2)``, so exactly ``scale / 3.0`` and ``scale``).
    """
    scale = float(scale)
    return scale / (IMAGE_DIVISOR / 2.0), scale / (MASK_DIVISOR / 2.0)


def loss_from_sums(sum_u, sum_m, scale) -> float:
    """Loss (3) from the sums of squared differences.

    Parameters
    ----------
    sum_u : float
        ``Σ (u_T − g_u)²`` over the images, channels and pixels (float64 accumulation).
    sum_m : float
        ``Σ (m_T − g_m)²`` over the images, mask channels and pixels.
    scale : float
        :func:`loss_scale` of the batch.

    Returns
    -------
    float
        ``scale · (sum_u / IMAGE_DIVISOR + sum_m / MASK_DIVISOR)``.
    """
    return float(scale * (sum_u / IMAGE_DIVISOR + sum_m / MASK_DIVISOR))


def check_mask_weights(weights, n_mask: int):
    """Validate per-class weights of the mask term (``None``: the article's loss).

    Parameters
    ----------
    weights : sequence of float or None
        One positive, finite weight per mask channel.
    n_mask : int
        Mask channels ``C_m`` of the network.

    Returns
    -------
    tuple of float or None
        ``None`` when ``weights`` is None or all ones (the article's loss, the same bits).

    Raises
    ------
    ValueError
        A count other than ``n_mask``, or a weight that is not a positive finite number.
    """
    if weights is None:
        return None
    try:
        w = tuple(float(x) for x in weights)
    except (TypeError, ValueError):
        raise ValueError(f"class weights must be numbers, got {weights!r}") from None
    if len(w) != int(n_mask):
        raise ValueError(f"{len(w)} class weights for {int(n_mask)} mask channel(s); give one per class")
    if not all(np.isfinite(x) and x > 0 for x in w):
        raise ValueError(f"class weights must be positive and finite, got {list(w)}")
    return None if all(x == 1.0 for x in w) else w


def loss_value_and_output_grad(u, gu, m, gm, *, batch_size=None, mask_weights=None):
    """Training loss (3) and its gradient with respect to the network outputs.

    Parameters
    ----------
    u : ndarray, shape (N, C, H, W), float32 or float64, C-contiguous
        Output image ``u_T``.
    gu : ndarray, shape (N, C, H, W), dtype of ``u``, C-contiguous
        Target image ``g_u``.
    m : ndarray, shape (N, H, W) or (N, C_m, H, W), dtype of ``u``, C-contiguous
        Output mask ``m_T`` (one channel, or one per class).
    gm : ndarray, the shape of ``m``, dtype of ``u``, C-contiguous
        Target mask ``g_m``.
    batch_size : int, optional
        Number of images the normalisation counts, ``>= N``: the whole batch's when these
        ``N`` images are a chunk of it, so that the chunks' losses and gradients add up to the
        batch's.  Default ``N``.
    mask_weights : sequence of float, optional
        Weight ``w_c`` of each mask channel's term (:func:`check_mask_weights`): the mask term
        becomes ``1/2 Σ_c w_c ‖m_c − gm_c‖²`` and ``∂loss/∂m_c`` is multiplied by ``w_c``.
        Default: all ones, the article's loss.

    Returns
    -------
    loss : float
        ``1/(batch_size H W) Σ_s [ 1/6 ‖u_s − gu_s‖² + 1/2 ‖m_s − gm_s‖² ]``, the squares
        summed in float64.
    du : ndarray, shape (N, C, H, W), dtype of ``u``
        ``∂loss/∂u = (u − gu) / (3 batch_size H W)``.
    dm : ndarray, the shape of ``m``, dtype of ``u``
        ``∂loss/∂m = (m − gm) / (batch_size H W)``.

    Raises
    ------
    TypeError
        An argument that is not a float32/float64 ndarray, or dtypes that differ.
    ValueError
        Wrong dimensions or shapes, a non-contiguous array, or ``batch_size < N``.

    Notes
    -----
    The article's training loss, eq. (3), is
    ``Σ_s 1/6 ‖u_T^s − g_u^s‖₂² + 1/2 ‖m_T^s − g_m^s‖₂²`` over the training images ``s``
    (the 1/6 accounts for the three colour channels).  Here it is divided by the batch size
    and the pixel count ``H W``, so the figure does not depend on either (Adam does not care
    about a constant factor); ``docs/gradients.md`` §5.  With ``C_m`` mask channels (one per
    nucleus class) the mask term is ``1/2 Σ_c ‖m_T,c − g_m,c‖²``, the sum over the channels
    (``docs/gradients.md`` §6): every class weighs like the article's single mask.  The differences and the gradients
    are formed in the inputs' dtype; NaN or inf in the inputs give a non-finite loss (not
    an error), which training checks for.

    Class weights (``mask_weights``) are not in the article, whose mask has one channel.  With
    several classes of very different pixel shares (scenario 3: other nuclei cover 1 % of the
    pixels, tumour 20 %) the rare class contributes almost nothing to the gradient; a weight
    ``w_c`` scales its term and its output gradient (``docs/gradients.md`` §7).  Every
    channel's per-pixel minimiser is still ``E[g_m,c | input]``: weights move the network's
    capacity, not the target.
    """
    check_array("u", u, 4)
    dt = u.dtype
    check_array("gu", gu, 4, dt)
    mdim = m.ndim if isinstance(m, np.ndarray) and m.ndim in (3, 4) else 3
    check_array("m", m, mdim, dt)
    check_array("gm", gm, mdim, dt)
    N, C, H, W = u.shape
    if gu.shape != u.shape:
        raise ValueError(f"gu has shape {gu.shape}, expected {u.shape} (the shape of u)")
    mshape = (N, H, W) if mdim == 3 else (N, m.shape[1], H, W)
    for name, a in (("m", m), ("gm", gm)):
        if a.shape != mshape or 0 in a.shape:
            raise ValueError(f"{name} has shape {a.shape}, expected {mshape} (N, [C_m,] H, W of u)")
    if batch_size is None:
        batch_size = N
    elif int(batch_size) != batch_size or int(batch_size) < N:
        raise ValueError(f"batch_size must be an integer >= N = {N}, got {batch_size}")
    n_mask = 1 if mdim == 3 else m.shape[1]
    weights = check_mask_weights(mask_weights, n_mask)
    scale = loss_scale(batch_size, H, W)
    f_u, f_m = output_grad_factors(scale)
    du = u - gu
    dm = m - gm
    if weights is None:
        sum_m = np.sum(dm.astype(np.float64) ** 2)
    else:
        per_channel = np.sum(dm.reshape(N, n_mask, H * W).astype(np.float64) ** 2, axis=(0, 2))
        sum_m = float(np.dot(per_channel, weights))
    loss = loss_from_sums(np.sum(du.astype(np.float64) ** 2), sum_m, scale)
    du *= f_u  # in the inputs' dtype, as ``du * f_u``
    dm *= f_m
    if weights is not None:
        dm *= np.asarray(weights, dm.dtype).reshape((1, n_mask) + (1,) * (dm.ndim - 2))
    return loss, du, dm
