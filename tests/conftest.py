"""The tests mirror the packages (tests/instrument_tests, dsp_tests, inference_tests, client, daemon,
offline, cli, viewer) plus tests/system (daemons and other subprocess runs). The folders of the
top-level packages carry a ``_tests`` suffix: with tests/ on sys.path a folder named ``dsp`` would be
imported as a namespace package in place of an editable install's ``dsp``. Helpers shared across folders live
here in tests/: support.py (the CLI as a subprocess, free ports, polling), wire_daemon.py,
independent_spectra.py and openms_oracle.py. This puts tests/ on sys.path so every test module
imports them as ``from support import ...``, whatever folder it is in. Test module basenames are
unique across folders (pytest's default import mode needs that without __init__.py files).
"""
import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
