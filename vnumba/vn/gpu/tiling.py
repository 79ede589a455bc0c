"""Launch geometry of the CUDA kernels.

Shared-memory tiles and per-thread register blocks must have compile-time sizes, so they
are fixed per :class:`Tiling` and baked into the kernels as closure constants.
:meth:`Tiling.hardware` is the design for an H100-class card (see ``docs/gpu.md``);
:meth:`Tiling.simulator` uses a handful of threads per block, each with much work, because
the CUDA simulator runs one Python thread per CUDA thread and pays about a millisecond per
thread for its set-up; the tests also run the kernels with tiles smaller than their images
so that partial and multiple tiles are exercised.
"""
from __future__ import annotations

from dataclasses import dataclass

from vnumba.ops.fields import Checked, PositiveInt

__all__ = ["Tiling"]


@dataclass(frozen=True)
class Tiling(Checked):
    """Block and tile sizes.

    Attributes
    ----------
    conv_bx, conv_by : int
        Threads of a convolution block along columns and rows.  One thread computes
        ``conv_py`` consecutive rows of one column, for up to ``conv_opt`` output channels.
    conv_py : int
        Output rows per thread (register block).
    conv_opt : int
        Most output channels per thread (register block); the actual value is chosen per
        operator by :meth:`channels_per_thread`.
    conv_cch : int
        Input channels staged in shared memory between two barriers.
    kg_th, kg_tw : int
        Pixel tile of the kernel-gradient correlation (rows, columns).
    kg_to : int
        Most output channels per thread in the kernel-gradient correlation.
    kg_cb : int
        Input channels per kernel-gradient block.
    kg_blocks : int
        Target number of blocks of a kernel-gradient launch (each loops over pixel tiles
        and writes one partial sum; a second kernel adds the partials).
    red_threads, red_blocks : int
        Threads and blocks of the reductions (RBF weight gradients, loss, ``λ`` gradient).
    ew_threads : int
        Threads per block of element-wise kernels (fold, Adam, fills; projections: one
        thread per filter).
    ew_blocks : int
        Most blocks of an element-wise launch (grid-stride loops cover the rest).
    """

    conv_bx: PositiveInt = 32
    conv_by: PositiveInt = 4
    conv_py: PositiveInt = 8
    conv_opt: PositiveInt = 8
    conv_cch: PositiveInt = 4
    kg_th: PositiveInt = 8
    kg_tw: PositiveInt = 32
    kg_to: PositiveInt = 8
    kg_cb: PositiveInt = 8
    kg_blocks: PositiveInt = 528
    red_threads: PositiveInt = 256
    red_blocks: PositiveInt = 264
    ew_threads: PositiveInt = 256
    ew_blocks: PositiveInt = 4096

    def __post_init__(self):
        super().__post_init__()
        for name in ("red_threads", "ew_threads"):
            v = getattr(self, name)
            if v & (v - 1):
                raise ValueError(f"Tiling.{name} must be a power of two (tree reductions), got {v}")
        if self.conv_bx * self.conv_by > 1024 or self.ew_threads > 1024 or self.red_threads > 1024:
            raise ValueError("at most 1024 threads per block")

    @classmethod
    def hardware(cls) -> "Tiling":
        """Defaults for a real GPU (designed for H100-class cards, unmeasured)."""
        return cls()

    @classmethod
    def simulator(cls) -> "Tiling":
        """A few threads per block and tiles smaller than the test images."""
        return cls(conv_bx=8, conv_by=1, conv_py=8, conv_opt=2, conv_cch=8,
                   kg_th=8, kg_tw=8, kg_to=2, kg_cb=2, kg_blocks=4,
                   red_threads=8, red_blocks=2, ew_threads=8, ew_blocks=2)

    def channels_per_thread(self, cout: int, most: int) -> int:
        """Output channels per thread for ``cout`` channels: a divisor of ``cout`` in
        ``[max(2, ceil(most/2)), most]`` if there is one (no idle registers), else
        ``min(most, cout)``."""
        lower = max(2, (most + 1) // 2) if most >= 2 else 1
        for d in range(most, lower - 1, -1):
            if d <= cout and cout % d == 0:
                return d
        return min(most, cout)
