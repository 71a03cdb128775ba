"""What `ionstream images` writes: PNG and 16-bit TIFF images, Parquet tables, the overview picture.

Images: ``images/NAME.png`` (8-bit, scaled between the 1st and 99.5th percentiles: for
looking) and ``images/NAME.tif`` (16-bit: counts / ``scale``, clipped at 0; ``scale`` and the
pixel size are in the TIFF's ImageDescription as JSON, the resolution tags in pixels per cm).
Labels: ``labels/cells.tif`` / ``regions.tif`` (uint16 label ids, 0 = none) and a coloured PNG.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ionstream.offline.imaging.pixels import RasterInfo


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError("ion-image output needs OpenCV: pip install 'ionstream[imaging]'") from None
    return cv2


def to_u8(image: np.ndarray) -> np.ndarray:
    """8-bit picture of an image: 0..255 between its 1st and 99.5th percentiles."""
    lo, hi = np.percentile(image, [1.0, 99.5])
    if hi <= lo:
        return np.zeros(image.shape, np.uint8)
    return np.round(np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def write_image(directory: Path, name: str, image: np.ndarray, raster: RasterInfo) -> tuple[Path, Path]:
    """``name.png`` (8-bit) and ``name.tif`` (16-bit, scale in its description) in ``directory``."""
    import tifffile

    cv2 = _cv2()
    directory.mkdir(parents=True, exist_ok=True)
    png, tif = directory / f"{name}.png", directory / f"{name}.tif"
    cv2.imwrite(str(png), to_u8(image))
    top = float(max(image.max(), 0.0))
    scale = top / 65535.0 if top > 0 else 1.0
    u16 = np.round(np.clip(image, 0, None) / scale).astype(np.uint16)
    desc = {"name": name, "unit": "counts", "scale": scale, "counts = value * scale": True,
            "pixel_size_um": [raster.pixel_size_x_um, raster.pixel_size_y_um]}
    _write_tiff(tifffile, tif, u16, desc, raster)
    return png, tif


def _write_tiff(tifffile, path: Path, data: np.ndarray, desc: dict, raster: RasterInfo) -> None:
    kwargs = {}
    if raster.pixel_size_x_um > 0 and raster.pixel_size_y_um > 0:
        kwargs = {"resolution": (1e4 / raster.pixel_size_x_um, 1e4 / raster.pixel_size_y_um), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, data, description=json.dumps(desc), metadata=None, **kwargs)


def write_labels(directory: Path, name: str, labels: np.ndarray, raster: RasterInfo) -> tuple[Path, Path]:
    """``name.tif`` (uint16 label ids) and ``name.png`` (each label a colour) in ``directory``."""
    import tifffile

    cv2 = _cv2()
    directory.mkdir(parents=True, exist_ok=True)
    png, tif = directory / f"{name}.png", directory / f"{name}.tif"
    _write_tiff(tifffile, tif, labels.astype(np.uint16), {"name": name, "labels": int(labels.max())}, raster)
    cv2.imwrite(str(png), label_colours(labels)[..., ::-1])  # OpenCV writes BGR
    return png, tif


def label_colours(labels: np.ndarray) -> np.ndarray:
    """An RGB picture of a label image: label 0 black, the others fixed pseudo-random colours."""
    n = int(labels.max()) + 1
    rng = np.random.default_rng(12345)
    palette = rng.integers(60, 256, size=(n, 3)).astype(np.uint8)
    palette[0] = 0
    return palette[labels]


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------

def object_table(kind: str, labels: np.ndarray, types: np.ndarray, images: np.ndarray, names: list[str],
                 raster: RasterInfo):
    """One row per object of a label image: id, type, area (pixels, um^2), centroid (pixels),
    and per image the mean and total over the object's pixels (counts)."""
    import pyarrow as pa

    n = int(labels.max())
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    yy, xx = np.indices(labels.shape)
    safe = np.maximum(area, 1)
    cols = {
        "kind": [kind] * n, "id": np.arange(1, n + 1, dtype=np.int32), "type": types[1:n + 1].astype(np.int32),
        "area_px": area.astype(np.int64),
        "area_um2": area * raster.pixel_size_x_um * raster.pixel_size_y_um,
        "centroid_x": np.bincount(flat, xx.ravel(), n + 1)[1:] / safe,
        "centroid_y": np.bincount(flat, yy.ravel(), n + 1)[1:] / safe,
    }
    for name, image in zip(names, images):
        total = np.bincount(flat, image.ravel(), n + 1)[1:]
        cols[f"total_{name}"] = total
        cols[f"mean_{name}"] = total / safe
    return pa.table(cols)


def pixel_table(images: np.ndarray, names: list[str], hits: np.ndarray, cells: np.ndarray | None,
                regions: np.ndarray | None):
    """One row per pixel scanned: x, y, scans (how many times), cell and region ids, each image's value."""
    import pyarrow as pa

    y, x = np.nonzero(hits)
    cols = {"x": x.astype(np.int32), "y": y.astype(np.int32), "scans": hits[y, x].astype(np.int32),
            "cell": (cells[y, x] if cells is not None else np.zeros(len(x))).astype(np.int32),
            "region": (regions[y, x] if regions is not None else np.zeros(len(x))).astype(np.int32)}
    for name, image in zip(names, images):
        cols[name] = image[y, x]
    return pa.table(cols)


def spectra_table(kind: str, sums: np.ndarray, counts: np.ndarray, axis: np.ndarray):
    """Mean spectrum of each object (counts per pixel, float32) on the run's m/z axis (float64)."""
    import pyarrow as pa

    ids = np.flatnonzero(counts[1:]) + 1
    n = len(axis)
    mean = (sums[ids] / counts[ids, None]).astype(np.float32)
    mz = pa.FixedSizeListArray.from_arrays(pa.array(np.tile(axis, len(ids)), pa.float64()), n)
    inten = pa.FixedSizeListArray.from_arrays(pa.array(mean.ravel(), pa.float32()), n)
    return pa.table({"kind": [kind] * len(ids), "id": ids.astype(np.int32), "pixels": counts[ids].astype(np.int64),
                     "mz": mz, "intensity": inten})


# ---------------------------------------------------------------------------------------
# Overview picture
# ---------------------------------------------------------------------------------------

def overview(path: Path, images: np.ndarray, names: list[str], cells: np.ndarray | None,
             regions: np.ndarray | None, title: str, background: np.ndarray | None = None) -> Path:
    """A PNG: every ion image, then the cell outlines (over ``background``, default the first
    image) and the regions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cv2 = _cv2()
    panels = [(name, to_u8(img), "magma") for name, img in zip(names, images)]
    if cells is not None:
        rgb = np.repeat(to_u8(images[0] if background is None else background)[..., None], 3, axis=2) // 2
        for c in range(1, int(cells.max()) + 1):
            contours, _ = cv2.findContours((cells == c).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(rgb, contours, -1, (80, 255, 80), 1)
        panels.append((f"cells ({int(cells.max())})", rgb, None))
    if regions is not None:
        panels.append((f"regions ({int(regions.max())})", label_colours(regions), None))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, img, cmap) in zip(axes.ravel(), panels):
        ax.imshow(img, cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
