"""Cython kernels: the hot loops, nogil, typed memoryviews.

Every kernel keeps a plain NumPy/SciPy reference next to its Python caller, for tests.
"""
