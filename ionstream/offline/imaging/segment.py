"""Segmentation of ion images with OpenCV: cells (instances) and tissue regions; scoring.

Cells (:func:`segment_cells`), from one ion image per cell marker:

1. each image is scaled robustly to 0..1 (its 1st and 99.5th percentiles);
2. a pixel belongs to a cell where the strongest marker passes Otsu's threshold (cv2.threshold
   on the maximum over the markers), less specks under ``min_area_px`` pixels; it takes the
   type of the strongest marker, so touching cells of different types part there;
3. per type, touching cells are split by a marker-controlled watershed on the distance
   transform (cv2.distanceTransform): one seed per summit of the distance that rises at least
   ``min_depth_px`` above the neck to any higher summit (h-maxima, by morphological
   reconstruction with cv2.dilate), then a priority flood from the seeds in order of
   decreasing distance, so that cells part at the necks and every pixel of the mask is kept;
4. a cell pressed against a larger one leaves no summit of its own, but pinches the outline:
   each object is cut along the shortest line between two concavities of its outline
   (cv2.findContours, cv2.convexityDefects) at least ``min_defect_px`` deep, where both parts
   keep 2 x ``min_area_px`` pixels and the cut is no longer than the smaller part is wide.

Regions (:func:`segment_regions`), from one ion image per tissue-type marker: the tissue is
where the summed scaled images pass Otsu's threshold; each tissue pixel takes the type of the
strongest marker; per type a 3x3 closing then opening, and connected components
(cv2.connectedComponentsWithStats) smaller than ``min_area_px`` are dropped.

:func:`score` matches a predicted label image to a true one (one-to-one, by IoU) and gives the
mean IoU over the true objects and the relative error of the object count.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np


def _cv2():
    try:
        import cv2
    except ImportError:  # the [imaging] extra is optional
        raise ImportError("segmentation needs OpenCV: pip install 'ionstream[imaging]'") from None
    return cv2


def scale_robust(image: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.5) -> np.ndarray:
    """``image`` mapped to 0..1 between its ``lo_pct`` and ``hi_pct`` percentiles (float32, clipped)."""
    lo, hi = np.percentile(image, [lo_pct, hi_pct])
    if hi <= lo:
        return np.zeros(image.shape, np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _otsu(scaled: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    u8 = np.round(scaled * 255).astype(np.uint8)
    _, mask = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return mask > 0


@dataclass
class Segmentation:
    """``labels`` (height x width int32, 0 = none, 1..n objects) and ``types`` (per label, index 0 unused: -1)."""

    labels: np.ndarray
    types: np.ndarray

    @property
    def count(self) -> int:
        return len(self.types) - 1


def segment_cells(images: list[np.ndarray], *, min_depth_px: float = 0.5, min_area_px: int = 4,
                  min_defect_px: float = 1.0) -> Segmentation:
    """Cells from one ion image per cell marker (see the module docstring). Types = index of the marker."""
    cv2 = _cv2()
    if not images:
        raise ValueError("segment_cells needs at least one ion image (a cell marker)")
    scaled = np.stack([scale_robust(im) for im in images])
    strongest = scaled.max(axis=0)
    kind = scaled.argmax(axis=0)
    mask = _drop_specks(_otsu(strongest), min_area_px)
    labels = np.zeros(mask.shape, np.int32)
    types = [-1]
    for t in range(len(images)):
        part = _watershed(mask & (kind == t), min_depth_px)
        for k in range(1, int(part.max()) + 1):
            where = part == k
            if where.any():
                types.append(t)
                labels[where] = len(types) - 1
    for _ in range(3):  # a cell split off may still hold another
        if not _split_concave(labels, types, min_defect_px, 2 * min_area_px):
            break
    return Segmentation(labels, np.array(types, np.int32))


def _split_concave(labels: np.ndarray, types: list[int], min_defect_px: float, min_area_px: int) -> int:
    """Cut each object in two along the shortest line between two concavities of its outline
    (cv2.convexityDefects at least ``min_defect_px`` deep), where both parts keep ``min_area_px``
    pixels and the cut is no longer than the smaller part is wide; in place. Returns the cuts made.

    This parts a small cell pressed against a larger one: their union's distance transform has
    one summit only, so the watershed cannot, but the outline is pinched where they meet."""
    cuts = 0
    for label in range(1, len(types)):
        ys, xs = np.nonzero(labels == label)
        if len(ys) < 2 * min_area_px:
            continue
        y0, x0 = ys.min(), xs.min()
        box = labels[y0:ys.max() + 1, x0:xs.max() + 1]
        part = _cut(np.pad(box == label, 1), min_defect_px, min_area_px)
        if part is not None:
            types.append(types[label])
            box[part[1:-1, 1:-1]] = len(types) - 1
            cuts += 1
    return cuts


def _cut(mask: np.ndarray, min_defect_px: float, min_area_px: int) -> np.ndarray | None:
    """The second part of ``mask`` after the cut (a bool image), or None when there is no good cut."""
    cv2 = _cv2()
    m8 = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    outline = max(contours, key=len)
    if len(outline) < 8:
        return None
    try:
        defects = cv2.convexityDefects(outline, cv2.convexHull(outline, returnPoints=False))
    except cv2.error:  # a self-touching outline: leave the object as it is
        return None
    if defects is None:
        return None
    points = [tuple(int(v) for v in outline[far][0])
              for _, _, far, depth in np.asarray(defects).reshape(-1, 4) if depth / 256.0 >= min_defect_px]
    if len(points) < 2:
        return None
    length, p, q = min((float(np.hypot(p[0] - q[0], p[1] - q[1])), p, q)
                       for i, p in enumerate(points) for q in points[i + 1:])
    cut = m8.copy()
    cv2.line(cut, p, q, 0, 1)
    n, cc, stats, _ = cv2.connectedComponentsWithStats(cut, connectivity=4)
    if n != 3:
        return None
    smaller = int(stats[1:, cv2.CC_STAT_AREA].min())
    if smaller < min_area_px or length > np.sqrt(smaller):
        return None
    grown = cv2.dilate(cc.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
    line = mask & (cc == 0)  # the cut's own pixels go to a neighbouring part
    cc[line] = grown[line]
    return cc == 2


def _drop_specks(mask: np.ndarray, min_area_px: int) -> np.ndarray:
    """``mask`` without its 8-connected components smaller than ``min_area_px`` pixels (noise)."""
    cv2 = _cv2()
    n, cc, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area_px
    return keep[cc]


def _watershed(mask: np.ndarray, min_depth_px: float) -> np.ndarray:
    """Instances of ``mask`` split at the necks of its distance transform (label image, 0 = outside)."""
    cv2 = _cv2()
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    m8 = mask.astype(np.uint8)
    # padded with 0: the raster edge counts as background, so a cell cut by it keeps its summit
    dist = cv2.distanceTransform(np.pad(m8, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    # Seeds: the summits at least min_depth_px above the neck to any higher summit (h-maxima).
    seeds = (dist - _reconstruct(np.maximum(dist - min_depth_px, 0), dist) >= min_depth_px - 1e-3) & mask
    n, markers = cv2.connectedComponents(seeds.astype(np.uint8), connectivity=8)
    n_cc, cc = cv2.connectedComponents(m8, connectivity=4)
    for c in range(1, n_cc):  # a component without a summit (a speck) gets a seed of its own
        where = cc == c
        if not (markers[where] > 0).any():
            markers[where] = n
            n += 1
    return _flood(dist, markers.astype(np.int32), mask)


def _flood(dist: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Watershed by priority flood: from the seeds, pixels of ``mask`` are claimed in order of
    decreasing distance ``dist``, each by the seed that reaches it first (4-neighbours), so
    boundaries fall in the necks. (cv2.watershed floods by colour differences between
    neighbours, which a smooth distance map does not have; hence this loop.)"""
    h, w = mask.shape
    labels = markers.copy()
    labels[~mask] = 0
    heap: list[tuple[float, int, int, int]] = []
    order = 0
    for y, x in zip(*np.nonzero(labels)):
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                heapq.heappush(heap, (-float(dist[ny, nx]), order, int(ny) * w + int(nx), int(labels[y, x])))
                order += 1
    while heap:
        _, _, at, label = heapq.heappop(heap)
        y, x = divmod(at, w)
        if labels[y, x]:
            continue
        labels[y, x] = label
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                heapq.heappush(heap, (-float(dist[ny, nx]), order, ny * w + nx, label))
                order += 1
    return labels


def _reconstruct(marker: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Morphological reconstruction by dilation of ``marker`` under ``limit`` (float32 images)."""
    cv2 = _cv2()
    kernel = np.ones((3, 3), np.uint8)
    current = np.minimum(marker, limit).astype(np.float32)
    while True:
        grown = np.minimum(cv2.dilate(current, kernel), limit)
        if np.array_equal(grown, current):
            return current
        current = grown


def segment_regions(images: list[np.ndarray], *, min_area_px: int = 20) -> Segmentation:
    """Tissue regions from one ion image per tissue-type marker (see the module docstring)."""
    cv2 = _cv2()
    if not images:
        raise ValueError("segment_regions needs at least one ion image (a tissue-type marker)")
    scaled = np.stack([scale_robust(im) for im in images])
    tissue = _otsu(np.clip(scaled.sum(axis=0), 0, 1))
    kind = scaled.argmax(axis=0)
    square = np.ones((3, 3), np.uint8)
    labels = np.zeros(tissue.shape, np.int32)
    types = [-1]
    for t in range(len(images)):
        m = (tissue & (kind == t)).astype(np.uint8)
        m = cv2.morphologyEx(cv2.morphologyEx(m, cv2.MORPH_CLOSE, square), cv2.MORPH_OPEN, square)
        n, cc, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=4)
        for c in range(1, n):
            if stats[c, cv2.CC_STAT_AREA] >= min_area_px:
                types.append(t)
                labels[(cc == c) & (labels == 0)] = len(types) - 1
    return Segmentation(labels, np.array(types, np.int32))


@dataclass(frozen=True)
class Score:
    """Agreement of a segmentation with the truth: ``mean_iou`` over the true objects (an
    unmatched one counts 0), ``count_error`` = |predicted - true| / true, and the counts."""

    mean_iou: float
    count_error: float
    n_true: int
    n_pred: int
    matched: int


def score(pred: np.ndarray, truth: np.ndarray) -> Score:
    """Match objects one-to-one by descending IoU (pairs with IoU > 0 only) and score them."""
    n_t, n_p = int(truth.max()), int(pred.max())
    if n_t == 0:
        return Score(1.0 if n_p == 0 else 0.0, float(n_p > 0), 0, n_p, 0)
    inter = np.bincount(truth.ravel().astype(np.int64) * (n_p + 1) + pred.ravel(),
                        minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)
    area_t, area_p = inter.sum(axis=1), inter.sum(axis=0)
    iou = inter / np.maximum(area_t[:, None] + area_p[None, :] - inter, 1)
    iou[0, :] = 0
    iou[:, 0] = 0
    best = np.zeros(n_t + 1)
    used_t, used_p = set(), set()
    for flat in np.argsort(iou, axis=None)[::-1]:
        t, p = divmod(int(flat), n_p + 1)
        if iou[t, p] <= 0:
            break
        if t in used_t or p in used_p:
            continue
        used_t.add(t)
        used_p.add(p)
        best[t] = iou[t, p]
    return Score(float(best[1:].mean()), abs(n_p - n_t) / n_t, n_t, n_p, len(used_t))
