"""Training and evaluating a lab's own classifier: `ionstream train` and `ionstream evaluate`.

Layout (one job per module):

- :mod:`.labels`    the labels table (CSV or a folder per class) -> :class:`LabelTable`
- :mod:`.data`      labelled spectra -> feature vectors (dsp.features, as the daemon) -> :class:`Dataset`
- :mod:`.split`     hold-out split by file or run, never by scan within a run
- :mod:`.net`       the network and its training loop (the only module that imports torch)
- :mod:`.export`    ONNX export, FP16/INT8 variants, model.json
- :mod:`.report`    metrics, confusion matrix and training curve (PNG), report.md
- :mod:`.trainer`   ``train``: the steps above in order
- :mod:`.evaluate`  ``evaluate``: score any bundle on labelled data, same report
- :mod:`.simruns`   labelled simulated runs (tests, docs, the default model)

Everything except :mod:`.net` (and the steps that call it) imports without torch.
"""
from __future__ import annotations


class TrainingError(Exception):
    """Bad training input or setup; the message names the file (and row) and what to do."""
