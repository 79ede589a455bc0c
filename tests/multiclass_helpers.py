"""A stand-in multi-class model (issue 20) for the prediction / evaluation tests (not a test
module).

:class:`FakeMultiClassModel` follows the contract of a multi-class network: ``config.n_mask
== 3``, ``meta["mask_classes"] == ["tumour", "immune", "other"]``, ``apply(u0)`` returns
``u`` (N, C, H, W) and ``m`` (N, 3, H, W) with maps in [0, 1].  Its class map ``k`` is
``1 - channel k`` of the locally smoothed image, so a nucleus painted dark in channel ``k`` only
(and bright in the others) is a nucleus of class ``k`` — e.g. a cyan nucleus (R dark) is a
tumour nucleus, magenta (G dark) an immune one, yellow (B dark) an "other" one.
"""
import numpy as np
from predict_helpers import FakeLocalModel

CLASSES = ["tumour", "immune", "other"]
#: RGB (uint8) that makes the fake model see a nucleus of each class.
PAINT = {"tumour": (0, 255, 255), "immune": (255, 0, 255), "other": (255, 255, 0)}


class FakeMultiClassModel(FakeLocalModel):
    def __init__(self, r=0, passes=1, classes=CLASSES, n_mask=None, **kw):
        super().__init__(r=r, passes=passes, **kw)
        self.meta["mask_classes"] = list(classes)
        n = len(classes) if n_mask is None else n_mask
        self.config = type("Cfg", (), {"n_mask": n})()

    def apply(self, u0):
        x, _ = super().apply(u0)
        m = np.ascontiguousarray(np.float32(1.0) - x[:, :len(self.meta["mask_classes"])])
        return x, m


def paint(shape, nuclei, size=6):
    """White RGB image with square nuclei ``[(row, col, class name)]``; also returns the
    annotation-like instance image (1..N in order)."""
    img = np.full(shape + (3,), 255, np.uint8)
    inst = np.zeros(shape, np.int32)
    for k, (r, c, name) in enumerate(nuclei, 1):
        img[r:r + size, c:c + size] = PAINT[name]
        inst[r:r + size, c:c + size] = k
    return img, inst
