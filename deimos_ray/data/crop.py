"""Which part of an image becomes the model's input: a central fraction, or the object.

Science cutouts (a galaxy, a radio source) put their object in the middle of a frame
that is mostly sky; the frame's edges then decide most of a whole-image feature vector.
``--crop F`` keeps the central fraction F of each side; ``--crop auto`` finds each
image's object (:func:`object_box`). The box is in the decoded image's pixels (after its
EXIF orientation), top-left inclusive, bottom-right exclusive, and goes into the rows
(``crop_top``, ``crop_left``, ``crop_height``, ``crop_width``, ``crop_note``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from deimos_ray.config import CROP_AUTO as AUTO

BORDER = 0.05  # the ring of the image the background is measured on (fraction of the side)
SIGMAS = 3.0  # the object: pixels this many robust sigmas from the background level ...
MIN_CONTRAST = 0.02  # ... and at least this far from it (of the [0, 1] range)
SMOOTH = 3  # the mean filter (pixels) applied before thresholding, against single-pixel noise
MIN_AREA = 0.001  # a region smaller than this fraction of the image is noise
PAD = 0.15  # the box grows by this fraction of its side on each side
WHOLE_IMAGE_NOTE = "nothing stands out from the border: whole image"

Box = tuple[int, int, int, int]  # top, left, bottom, right


def centre_box(height: int, width: int, fraction: float) -> Box:
    """The central ``fraction`` of each side (at least one pixel)."""
    h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
    top, left = (height - h) // 2, (width - w) // 2
    return top, left, top + h, left + w


def object_box(gray: np.ndarray) -> Box | None:
    """The square around the image's object, or None when nothing stands out.

    Method, on the luminance ``gray`` (H, W) in [0, 1]:

    1. background level and spread from the image's own border: the median and the
       median absolute deviation (x 1.4826, a Gaussian sigma) of the outer ``BORDER``
       ring;
    2. after a ``SMOOTH`` x ``SMOOTH`` mean filter, the object's pixels are those further
       from that level than ``SIGMAS`` sigmas and ``MIN_CONTRAST`` (bright objects on
       sky and dark ones on a bright field alike);
    3. the largest 8-connected region of them (at least ``MIN_AREA`` of the image, else
       None), its bounding box padded by ``PAD`` of its longer side on each side, made
       square around its centre and moved inside the image (clipped when the square is
       larger than the image's shorter side).
    """
    height, width = gray.shape
    ring = max(1, round(BORDER * min(height, width)))
    border = np.concatenate([gray[:ring].ravel(), gray[-ring:].ravel(), gray[:, :ring].ravel(), gray[:, -ring:].ravel()])
    level = float(np.median(border))
    sigma = 1.4826 * float(np.median(np.abs(border - level)))
    smooth = ndimage.uniform_filter(gray.astype(np.float32), size=SMOOTH, mode="nearest")
    mask = np.abs(smooth - level) > max(SIGMAS * sigma, MIN_CONTRAST)
    regions, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return None
    sizes = np.bincount(regions.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    if sizes[largest - 1] < MIN_AREA * height * width:
        return None
    rows, cols = np.nonzero(regions == largest)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(bottom - top, right - left)
    side = min(round(side * (1 + 2 * PAD)), height, width)
    centre_y, centre_x = (top + bottom) / 2, (left + right) / 2
    top = int(np.clip(round(centre_y - side / 2), 0, height - side))
    left = int(np.clip(round(centre_x - side / 2), 0, width - side))
    return top, left, top + side, left + side


def crop_box(gray: np.ndarray | None, height: int, width: int, crop: float | str) -> tuple[Box, str]:
    """The box ``crop`` keeps of an image of ``height`` x ``width`` (``gray``, its
    luminance, is needed for ``auto`` only), and a note when ``auto`` fell back to the
    whole image."""
    if crop != AUTO:
        return centre_box(height, width, float(crop)), ""
    box = object_box(gray)
    if box is None:
        return (0, 0, height, width), WHOLE_IMAGE_NOTE
    return box, ""
