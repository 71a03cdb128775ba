"""Mass-spectrometry imaging offline: ion images, segmentation, tables, imzML (docs/imaging.md).

    pixels.py    read pixels (position + spectrum) from captures and imzML files, in parts
    ionimages.py ion-image windows and the per-part work that sums them (runs in Dask workers)
    segment.py   OpenCV segmentation of cells and tissue regions; scoring against a truth
    outputs.py   PNG / 16-bit TIFF images, Parquet tables, the overview picture
    imzml.py     imzML export and import (pyimzML)
    run.py       the Dask driver behind `ionstream images`
    live.py      the live image builder for an `image` topic (needs no OpenCV; not wired in yet)
"""
