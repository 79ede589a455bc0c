"""Which images an evaluation reads: annotated pairs below a folder, their pixel sizes from
``manifest.csv``, and the folder each is pooled under."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from vnumba.io.images import MPP_RANGE

__all__ = ["find_annotated_images", "nominal_mpp", "folder_name"]


def find_annotated_images(data_dir) -> list:
    """Annotated images under ``data_dir`` (recursively): pairs ``(image, labels.npz)``.

    An image ``NAME.(png|jpg|jpeg|tif|tiff)`` belongs to ``NAME_labels.npz`` in the same folder.
    Label files without an image are reported by raising ``FileNotFoundError``.
    """
    from vnumba.io.images import INPUT_SUFFIXES

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    out = []
    for lab in sorted(data_dir.rglob("*_labels.npz")):
        stem = lab.name[: -len("_labels.npz")]
        cands = [lab.with_name(stem + s) for s in INPUT_SUFFIXES]
        cands += [lab.with_name(stem + s.upper()) for s in INPUT_SUFFIXES]
        img = next((c for c in cands if c.is_file()), None)
        if img is None:
            raise FileNotFoundError(f"{lab}: no image {stem}.png/.jpg/.tif next to it")
        out.append((img, lab))
    return out


def nominal_mpp(data_dir, image_path) -> float | None:
    """Pixel size of an image from the nearest ``manifest.csv`` that lists it.

    The image's folder and all its ancestors, up to the filesystem root, are searched in
    that order; the first ``manifest.csv`` with a row whose ``file`` (relative to the
    manifest's folder) is the image decides: ``10 / magnification`` µm/px for a
    ``magnification`` like ``40x`` (the usual nominal 0.25 µm/px at 40×), else a single
    number in the ``mpp`` column, else None.  The search does not stop at ``data_dir``, so an
    image gets the same pixel size whether its own folder or a parent is evaluated.

    Parameters
    ----------
    data_dir : path-like
        The evaluated folder (kept for the interface; it does not limit the search).
    image_path : path-like

    Returns
    -------
    float or None
        µm/px, None if no manifest lists the image or its row states no usable size.
    """
    image_path = Path(image_path).resolve()
    for folder in [image_path.parent, *image_path.parent.parents]:
        man = folder / "manifest.csv"
        if man.is_file():
            with open(man, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    if (folder / (row.get("file") or "")).resolve() != image_path:
                        continue
                    mag = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[xX]\s*", row.get("magnification") or "")
                    value = None
                    if mag and float(mag.group(1)) > 0:
                        value = 10.0 / float(mag.group(1))
                    else:
                        nums = re.findall(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", row.get("mpp") or "")
                        if len(nums) == 1 and float(nums[0]) > 0:
                            value = float(nums[0])
                    if value is not None and not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
                        raise ValueError(f"{man}: row {row.get('file')!r} gives "
                                         f"{value:g} um/px, not a plausible pixel size "
                                         f"({MPP_RANGE[0]:g} to {MPP_RANGE[1]:g})")
                    return value
    return None


def folder_name(data_dir: Path, rel: str) -> str:
    """Pooling folder of an image: its folder below ``data_dir``, else ``data_dir``'s name
    (so that a tile is pooled under the same folder name whether ``data_dir`` is its folder
    or a parent)."""
    parent = Path(rel).parent
    if str(parent) == ".":
        return Path(data_dir).resolve().name or str(data_dir)
    return parent.as_posix()
