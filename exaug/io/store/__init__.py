"""Resumable, crash-safe face tables: what ``exaug align`` and ``exaug augment`` write through.

Runs over large datasets get killed (SIGKILL, preemption, Ctrl-C), so a writer commits whole
sources at a time as an atomic *part* (``<output>.parts/`` beside an HDF5 output,
``<output>/.exaug-parts/`` inside a folder output) and then republishes the visible output
atomically: an HDF5 *master* whose ``images`` is a virtual dataset over the parts, or the PNGs'
``manifest.csv``. A killed run therefore leaves an output that opens and holds every part committed
up to its last republishing (which waits once it grows dear: :mod:`.parts`), and the parts are the
truth a resumed run starts from. ``finish()`` consolidates (HDF5: one self-contained compressed
file) and removes the parts.

Parts, masters and final files share one HDF5 table layout (the contract in docs/DESIGN.md), so the
same code writes all three, and consolidating parts is the same operation as merging finished
outputs. Republishing rewrites every small column, so it costs O(rows so far): commit batches of
many sources, not single faces (a large run republishes less often than it commits). Extra columns
are whatever the first non-empty batch had; an empty output has no extra columns and takes its image
size from ``attrs['size']`` (an int for square faces or ``[height, width]``; ``(0, 0)`` when missing).

The package, one module per part: :mod:`.rows` (the row schema), :mod:`.image_columns` (images
read on demand), :mod:`.table` (the table model), :mod:`.hdf5` and :mod:`.folder` (the two forms
on disk), :mod:`.parts` (the commit/resume mechanism), :mod:`.writers` (both forms' writers and
``open_writer``), :mod:`.reading` (``read_faces``, ``merge``).
"""

from exaug.io.store.hdf5 import HDF5_SUFFIXES
from exaug.io.store.parts import FaceWriter
from exaug.io.store.reading import is_face_table, merge, read_faces
from exaug.io.store.rows import FaceRows
from exaug.io.store.table import FaceTable
from exaug.io.store.writers import open_writer

__all__ = ["HDF5_SUFFIXES", "FaceRows", "FaceTable", "FaceWriter", "is_face_table", "merge", "open_writer",
           "read_faces"]
