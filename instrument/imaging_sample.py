"""A synthetic imaging sample for the simulator: tissue regions and cells with their own spectra.

    sample = make_sample(SampleConfig(width=64, height=64, seed=3), n_samples=4096)
    w = sample.heights(x, y)             # base-peak heights (counts) of every compound at a pixel
    sample.save_truth("run.truth.npz")  # the ground truth: cell and region label masks, markers

The sample is a tissue section (a smooth blob) on a background of matrix, split into
regions of several tissue types, with cells of several cell types inside it: ellipses of
varied size, a share of them touching a neighbour. Every pixel belongs to exactly one
region (0 = off tissue) and at most one cell (0 = none), so the truth masks are exact at
pixel level. Each tissue type and each cell type has a marker compound found nowhere else;
two matrix compounds are everywhere (weaker on tissue: ion suppression), one compound is on
all tissue. Intensities vary from pixel to pixel (log-normal, sigma 0.15 common to the
pixel, 0.08 per compound). Everything follows from the seed.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from instrument.spectrum_model import InstrumentModel, ScanGenerator, default_model

MATRIX_HEIGHT = 150.0
"""Base-peak height (counts) of each matrix compound off tissue (x 0.6 on tissue)."""
TISSUE_COMMON_HEIGHT = 200.0
TISSUE_MARKER_HEIGHT = 400.0
CELL_MARKER_HEIGHT = 600.0
POOL_FACTOR = 4
"""The sample's compounds are chosen from this many times as many candidates."""
MARKER_CLEAR_FWHM = 1.5
"""No ion of another compound (>= 5 % of its base peak) lies within this many FWHM of a marker's m/z."""


@dataclass(frozen=True)
class SampleConfig:
    """The synthetic sample. Sizes in pixels (``pixel_size_um`` um each).

    cells: cells in the tissue (0 = about one per 120 pixels of tissue).
    cell_radius_px: (smallest, largest) semi-major axis of a cell, pixels.
    contact: share of cells placed touching a cell already there.
    tissue_regions / tissue_types: regions the tissue is split into, and their types (cyclic).
    """

    width: int = 64
    height: int = 64
    pixel_size_um: float = 10.0
    seed: int = 1
    cells: int = 0
    cell_radius_px: tuple[float, float] = (3.0, 6.0)
    contact: float = 0.35
    tissue_regions: int = 3
    tissue_types: int = 3
    cell_types: int = 2

    def __post_init__(self) -> None:
        problems = []
        if self.width < 16 or self.height < 16:
            problems.append(f"an imaging raster needs at least 16x16 pixels, got {self.width}x{self.height}")
        lo, hi = self.cell_radius_px
        if not 1.0 <= lo <= hi:
            problems.append(f"cell_radius_px must be (lo, hi) with 1 <= lo <= hi, got {self.cell_radius_px!r}")
        if not 0.0 <= self.contact <= 1.0:
            problems.append(f"contact must be 0..1, got {self.contact!r}")
        if self.tissue_types < 1 or self.cell_types < 1 or self.tissue_regions < self.tissue_types:
            problems.append("need tissue_regions >= tissue_types >= 1 and cell_types >= 1")
        if self.pixel_size_um <= 0:
            problems.append(f"pixel_size_um must be > 0, got {self.pixel_size_um!r}")
        if problems:
            raise ValueError("; ".join(problems))



@dataclass(frozen=True)
class Marker:
    """A compound's role in the sample and its base-peak m/z (the ion image to look at)."""

    role: str        # "matrix", "tissue", "tissue_type", "cell_type"
    type_index: int  # which tissue/cell type (0-based; -1 for matrix and tissue)
    compound: int
    mz: float
    half_width: float = 0.0  # m/z: the peak's FWHM there, a good half-width for its ion image window


class Sample:
    """The truth and the per-pixel compound heights of a synthetic imaging sample.

    ``cells`` (height x width, int32): 0 = no cell, 1..n a cell. ``regions``: 0 = off tissue,
    1..R a tissue region. ``cell_type[i]`` / ``region_type[i]``: the type of cell/region i
    (index 0 unused: -1). ``markers``: one Marker per compound.
    """

    def __init__(self, config: SampleConfig, generator: ScanGenerator, cells: np.ndarray, regions: np.ndarray,
                 cell_type: np.ndarray, region_type: np.ndarray, markers: list[Marker], heights: np.ndarray):
        self.config = config
        self.generator = generator
        self.cells = cells
        self.regions = regions
        self.cell_type = cell_type
        self.region_type = region_type
        self.markers = markers
        self._heights = heights  # (height, width, n_compounds) float32 counts

    @property
    def n_cells(self) -> int:
        return len(self.cell_type) - 1

    def heights(self, x: int, y: int) -> np.ndarray:
        """Base-peak height (float32 counts) of every compound at pixel (x, y); a fresh array."""
        return self._heights[y, x].copy()

    def marker_mz(self, role: str) -> list[float]:
        """The marker m/z of each type of ``role`` ("tissue_type" or "cell_type"), in type order."""
        return [m.mz for m in sorted((m for m in self.markers if m.role == role), key=lambda m: m.type_index)]

    def save_truth(self, path: str | Path) -> Path:
        """Write the truth as a NumPy .npz (arrays ``cells``, ``regions``, ``cell_type``, ``region_type``
        and ``meta``: JSON of the config and the markers). Returns the path."""
        path = Path(path)
        meta = {"config": asdict(self.config), "markers": [asdict(m) for m in self.markers],
                "n_samples": self.generator.n_samples}
        with open(path, "wb") as f:  # a file object: np.savez would otherwise append .npz
            np.savez_compressed(f, cells=self.cells, regions=self.regions, cell_type=self.cell_type,
                                region_type=self.region_type, meta=np.array(json.dumps(meta)))
        return path


def load_truth(path: str | Path) -> dict:
    """The arrays of a truth file and its ``meta`` (a dict)."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in ("cells", "regions", "cell_type", "region_type")}
        out["meta"] = json.loads(str(z["meta"]))
    return out


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------

def make_sample(config: SampleConfig, n_samples: int = 65536, *, model: InstrumentModel | None = None,
                dtype=np.uint16) -> Sample:
    """The sample of ``config`` with a ScanGenerator for its compounds on ``n_samples``-point spectra."""
    model = model or imaging_model(n_samples)
    generator, markers = _generator_with_clear_markers(config, model, dtype)
    rng = np.random.default_rng([config.seed, 0x1AA6E])
    tissue = _tissue_mask(config, rng)
    regions, region_type = _regions(config, tissue, rng)
    cells, cell_type = _cells(config, tissue, rng)
    heights = _heights(config, len(generator.compounds), markers, tissue, regions, region_type, cells, cell_type, rng)
    return Sample(config, generator, cells, regions, cell_type, region_type, markers, heights)


def imaging_model(n_samples: int = 65536) -> InstrumentModel:
    """The instrument of imaging mode: the default one, with the resolving power lowered on
    axes shorter than 65536 samples so that a peak still spans ~5 samples (a 4096-point axis
    gives R = 344 at m/z 1000: an imaging TOF run at low resolution)."""
    if n_samples >= 65536:
        return default_model(n_samples)
    return InstrumentModel(n_samples=n_samples, resolving_power=5500.0 * n_samples / 65536)


def _base_peak(compound) -> float:
    ions = compound.ions
    return float(ions["mz"][int(np.argmax(ions["rel_height"]))])


def _generator_with_clear_markers(config: SampleConfig, model: InstrumentModel,
                                  dtype) -> tuple[ScanGenerator, list[Marker]]:
    """A generator over a pool of compounds, and the compounds of the sample chosen from it so
    that each one's base peak is clear of every other chosen compound's ions (an ion image at a
    marker shows only that marker). Pool compounds not chosen are never present."""
    roles = ([("matrix", -1)] * 2 + [("tissue", -1)] + [("tissue_type", t) for t in range(config.tissue_types)]
             + [("cell_type", c) for c in range(config.cell_types)])
    for attempt in range(20):
        gen = ScanGenerator(model, seed=config.seed * 1000 + attempt, n_compounds=POOL_FACTOR * len(roles),
                            dtype=dtype)
        chosen: list[int] = []
        for j, c in enumerate(gen.compounds):
            if _clear(j, chosen, gen.compounds, model):
                chosen.append(j)
            if len(chosen) == len(roles):
                return gen, [Marker(role, t, j, _base_peak(gen.compounds[j]),
                                    float(model.fwhm(_base_peak(gen.compounds[j]))))
                             for j, (role, t) in zip(chosen, roles)]
    raise RuntimeError(f"no clear set of marker compounds for seed {config.seed}")  # not seen in practice


def _clear(j: int, chosen: list[int], compounds, model: InstrumentModel) -> bool:
    """Compound ``j``'s base peak lies in m/z 120..2000 and it and the ``chosen`` ones keep clear
    of each other's base peaks (no ion >= 5 % within MARKER_CLEAR_FWHM FWHM)."""
    mz = _base_peak(compounds[j])
    if not 120.0 < mz < 2000.0:
        return False
    for k in chosen:
        for a, b in ((j, k), (k, j)):
            peak = _base_peak(compounds[a])
            ions = compounds[b].ions[compounds[b].ions["rel_height"] >= 0.05]
            if (np.abs(ions["mz"] - peak) < MARKER_CLEAR_FWHM * float(model.fwhm(peak))).any():
                return False
    return True


def _tissue_mask(config: SampleConfig, rng: np.random.Generator) -> np.ndarray:
    """A blob: an ellipse over ~60 % of the raster whose edge wobbles (low radial harmonics)."""
    h, w = config.height, config.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.45, 0.55)
    ax, ay = w * 0.44, h * 0.42
    theta = np.arctan2((yy - cy) / ay, (xx - cx) / ax)
    rho = np.hypot((xx - cx) / ax, (yy - cy) / ay)
    edge = np.ones_like(theta)
    for k in (2, 3, 5):
        edge += rng.uniform(0.02, 0.06) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    return rho <= edge


def _regions(config: SampleConfig, tissue: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tissue split into ``tissue_regions`` Voronoi cells around seeds drawn inside it."""
    ys, xs = np.nonzero(tissue)
    pick = rng.choice(len(xs), size=config.tissue_regions, replace=False)
    seeds = np.stack([xs[pick], ys[pick]], axis=1).astype(np.float64)
    yy, xx = np.mgrid[0:config.height, 0:config.width]
    d = (xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2
    regions = (np.argmin(d, axis=2) + 1).astype(np.int32)
    regions[~tissue] = 0
    region_type = np.concatenate([[-1], np.arange(config.tissue_regions) % config.tissue_types]).astype(np.int32)
    return regions, region_type


def _cells(config: SampleConfig, tissue: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Elliptic cells inside the tissue; a share ``contact`` of them placed against another cell."""
    h, w = config.height, config.width
    lo, hi = config.cell_radius_px
    n_target = config.cells or max(1, int(tissue.sum() / 120))
    inside = _distance_inside(tissue)
    placed: list[tuple[float, float, float, float, float]] = []  # cx, cy, a, b, angle
    for _ in range(200 * n_target):
        if len(placed) >= n_target:
            break
        a = rng.uniform(lo, hi)
        b = a * rng.uniform(0.7, 1.0)
        angle = rng.uniform(0, math.pi)
        touching = bool(placed) and rng.random() < config.contact
        if touching:
            j = int(rng.integers(len(placed)))
            cj = placed[j]
            phi = rng.uniform(0, 2 * math.pi)
            dist = (0.5 * (a + b) + 0.5 * (cj[2] + cj[3])) * rng.uniform(0.92, 1.0)
            cx, cy = cj[0] + dist * math.cos(phi), cj[1] + dist * math.sin(phi)
        else:
            j = -1
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        ix, iy = int(cx), int(cy)
        if not (0 <= ix < w and 0 <= iy < h) or inside[iy, ix] < a + 1.0:
            continue
        ok = True
        for k, (px, py, pa, pb, _) in enumerate(placed):
            d = math.hypot(cx - px, cy - py)
            if k == j:
                continue
            if d < a + pa + 2.0:
                ok = False
                break
        if ok:
            placed.append((cx, cy, a, b, angle))
    cells = _rasterise(placed, h, w)
    # Renumber: a cell wholly covered by its neighbours (rare) leaves no pixel.
    ids = np.unique(cells)
    ids = ids[ids > 0]
    remap = np.zeros(len(placed) + 1, np.int32)
    remap[ids] = np.arange(1, len(ids) + 1)
    cells = remap[cells]
    cell_type = np.concatenate([[-1], rng.integers(0, config.cell_types, size=len(ids))]).astype(np.int32)
    return cells, cell_type


def _distance_inside(mask: np.ndarray) -> np.ndarray:
    """Distance (pixels) from each pixel to the nearest pixel outside ``mask`` (0 outside)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask)


def _rasterise(placed, h: int, w: int) -> np.ndarray:
    """Label image: each pixel goes to the cell whose normalised elliptic distance is smallest, if <= 1."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    best = np.full((h, w), np.inf)
    cells = np.zeros((h, w), np.int32)
    for i, (cx, cy, a, b, angle) in enumerate(placed, 1):
        c, s = math.cos(angle), math.sin(angle)
        u = (xx + 0.5 - cx) * c + (yy + 0.5 - cy) * s
        v = -(xx + 0.5 - cx) * s + (yy + 0.5 - cy) * c
        d = np.hypot(u / a, v / b)
        take = (d <= 1.0) & (d < best)
        best[take] = d[take]
        cells[take] = i
    return cells


def _heights(config: SampleConfig, n_compounds: int, markers: list[Marker], tissue: np.ndarray, regions: np.ndarray,
             region_type: np.ndarray, cells: np.ndarray, cell_type: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    h, w = tissue.shape
    out = np.zeros((h, w, n_compounds), np.float64)
    rtype = region_type[regions]   # -1 off tissue
    ctype = cell_type[cells]       # -1 outside cells
    for m in markers:
        j = m.compound
        if m.role == "matrix":
            out[..., j] = np.where(tissue, 0.6, 1.0) * MATRIX_HEIGHT
        elif m.role == "tissue":
            out[..., j] = tissue * TISSUE_COMMON_HEIGHT
        elif m.role == "tissue_type":
            out[..., j] = (rtype == m.type_index) * TISSUE_MARKER_HEIGHT
        else:
            out[..., j] = (ctype == m.type_index) * CELL_MARKER_HEIGHT
    pixel = rng.lognormal(0.0, 0.15, size=(h, w, 1))
    each = rng.lognormal(0.0, 0.08, size=out.shape)
    return (out * pixel * each).astype(np.float32)
