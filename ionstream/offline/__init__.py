"""Offline work on files: mzML import/export, peak lists, reprocessing archives on Dask, plots."""
