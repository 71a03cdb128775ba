"""The labels table: which scans of which files belong to which class.

Two forms (docs/training.md):

**CSV** (``labels.csv``), one row per labelled stretch of a file; ``#`` starts a comment, a first
row ``file,...`` is a header::

    file,scans,label,run
    runs/blank_1.isc,all,blank,day1          # every scan of the file
    runs/mix_1.isc,120-340,peptide,day1      # scan numbers 120..340 (inclusive)
    runs/mix_1.isc,rt:5.5-7.25,lipid,day1    # retention time 5.5..7.25 min (start inclusive)
    runs/mix_1.mzML,57,polymer               # one scan number

Columns: ``file`` (relative to the CSV's folder, or absolute), ``scans`` (``all``/``*``/empty,
a scan number, a range ``A-B`` or ``rt:A-B`` in minutes), ``label``, and optionally ``run`` (the
grouping for the hold-out split; default: the file). Two columns mean ``file,label`` (all scans).

**A folder per class**: ``LABELS/peptide/*.isc``, ``LABELS/lipid/*.mzML``...: every scan of every
file in a class folder has that label; each file is its own run.

Parsing checks what can be checked without reading spectra (files exist, selections parse, at
least two classes); :mod:`.data` checks scan numbers, overlaps and coverage while reading.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from inference.training import TrainingError

SPECTRUM_SUFFIXES = (".isc", ".mzml")
"""File name endings taken as labelled data in a folder per class (case-insensitive)."""


@dataclass(frozen=True, slots=True)
class Selector:
    """Which scans of a file a row labels: ``kind`` is ``all``, ``scans`` (scan numbers ``lo..hi``
    inclusive) or ``rt`` (retention time ``lo <= t < hi``, minutes)."""

    kind: str
    lo: float = 0.0
    hi: float = 0.0
    text: str = "all"

    def matches(self, scan: int, time_s: float) -> bool:
        """Whether the scan numbered ``scan`` taken at ``time_s`` (s from the run start) is selected."""
        if self.kind == "all":
            return True
        if self.kind == "scans":
            return self.lo <= scan <= self.hi
        return self.lo <= time_s / 60.0 < self.hi


@dataclass(frozen=True, slots=True)
class LabelRow:
    """One row of the table (``where`` is ``labels.csv:7`` or the class folder)."""

    where: str
    path: Path
    selector: Selector
    label: str
    run: str


@dataclass(frozen=True)
class LabelTable:
    """The parsed table: its rows and the classes in sorted order (the model's output order)."""

    origin: Path
    rows: tuple[LabelRow, ...]
    labels: tuple[str, ...]

    @property
    def files(self) -> list[Path]:
        """Distinct files, in first-mention order."""
        return list(dict.fromkeys(r.path for r in self.rows))


def parse_selector(text: str, where: str) -> Selector:
    """A ``scans`` cell -> :class:`Selector`; TrainingError naming ``where`` if it does not parse."""
    t = text.strip().lower().replace(" ", "")
    if t in ("", "*", "all"):
        return Selector("all")
    rt = t.startswith("rt:")
    body = t[3:] if rt else t
    lo_s, sep, hi_s = body.partition("-")
    try:
        if rt:
            lo = float(lo_s)
            hi = float(hi_s) if sep else math.nan
            ok = sep and math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi
        else:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
            ok = 0 <= lo <= hi
    except ValueError:
        ok = False
    if not ok:
        raise TrainingError(
            f"{where}: scans {text!r} is not a selection; write 'all', a scan number (57), a scan range "
            f"(120-340, first <= last) or a retention-time range in minutes (rt:5.5-7.25, start < end)")
    return Selector("rt" if rt else "scans", float(lo), float(hi), text.strip())


def _check_classes(labels: set[str], origin: Path) -> tuple[str, ...]:
    if len(labels) < 2:
        found = ", ".join(sorted(labels)) or "none"
        raise TrainingError(f"{origin}: a classifier needs at least two classes; found {len(labels)} ({found}). "
                            f"Label runs of at least two classes (a blank run makes a good second class).")
    return tuple(sorted(labels))


def parse_labels(path: str | Path) -> LabelTable:
    """Read a labels CSV or a folder per class (see the module docstring).

    Raises
    ------
    TrainingError
        Naming the file and row: a missing file, an unparsable selection, an empty label, an
        empty class folder, fewer than two classes.
    """
    origin = Path(path)
    if origin.is_dir():
        return _parse_folder(origin)
    if not origin.is_file():
        raise TrainingError(f"{origin}: labels not found (give a labels CSV or a folder with a sub-folder per class)")
    return _parse_csv(origin)


def _parse_csv(origin: Path) -> LabelTable:
    try:
        text = origin.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingError(f"{origin}: cannot read the labels table ({exc})") from None
    rows: list[LabelRow] = []
    base = origin.parent
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0]  # a comment (so file names cannot hold '#')
        cells = [c.strip() for c in next(csv.reader([line]), [])]
        while cells and not cells[-1]:
            cells.pop()  # trailing empty cells
        if not cells:
            continue
        where = f"{origin}:{lineno}"
        if not rows and cells[0].lower() == "file":
            continue  # header
        if len(cells) == 2:
            cells = [cells[0], "all", cells[1]]
        if len(cells) not in (3, 4):
            raise TrainingError(f"{where}: expected file,scans,label[,run] (3 or 4 columns), got {len(cells)}: "
                                f"{','.join(cells)}")
        file_s, sel_s, label = cells[:3]
        if not label:
            raise TrainingError(f"{where}: empty label")
        p = Path(file_s)
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise TrainingError(f"{where}: file {file_s!r} not found (looked for {p}); paths are relative to "
                                f"the labels file's folder")
        run = cells[3] if len(cells) == 4 and cells[3] else str(p.resolve())
        rows.append(LabelRow(where, p, parse_selector(sel_s, where), label, run))
    if not rows:
        raise TrainingError(f"{origin}: no labelled rows (expected file,scans,label[,run] lines)")
    return LabelTable(origin, tuple(rows), _check_classes({r.label for r in rows}, origin))


def _parse_folder(origin: Path) -> LabelTable:
    rows: list[LabelRow] = []
    classes = sorted(d for d in origin.iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in classes:
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in SPECTRUM_SUFFIXES)
        if not files:
            raise TrainingError(f"{d}: class folder {d.name!r} has no .isc or .mzML files (an empty class); "
                                f"add its runs or remove the folder")
        for f in files:
            rows.append(LabelRow(str(d), f, Selector("all"), d.name, str(f.resolve())))
    return LabelTable(origin, tuple(rows), _check_classes({r.label for r in rows}, origin))
