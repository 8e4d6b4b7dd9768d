"""Paired training faces: a CK+ sequence's neutral first frame and its labelled peak, both ways.

A sequence ``S###_###`` starts neutral and ends at its peak, same person, same session, so the
pair says exactly how this face moves and what it looks like when it gets there. Each pair is used
in both directions (neutral -> peak teaches the expression, peak -> neutral teaches undoing one).

Faces come from an aligned table with meshes (``exaug align --mesh``). The target face is moved
into the source face's crop by a similarity fitted on the mesh points an expression does not move
(eye corners, nose, upper head outline): MTCNN's alignment uses the mouth corners, so a smile
shifts the peak's crop; fitting on stable points puts both frames in the same place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from torch import Tensor

from exaug.errors import ExaugError
from exaug.expressions import EXPRESSIONS
from exaug.faces.align import apply_affine, estimate_similarity, warp_faces
from exaug.io.store import read_faces
from exaug.model.geometry import STABLE_POINTS

_CK_NAME = re.compile(r"^(S\d{3})_(\d{3})_\d{8}$")


@dataclass
class PairedFaces:
    source: Tensor  # (n, 3, S, S) uint8: the face that goes in
    target: Tensor  # (n, 3, S, S) uint8: the same person's real face in the target expression, in source's frame
    source_mesh: Tensor  # (n, 468, 2) float64, source crop pixels
    target_mesh: Tensor  # (n, 468, 2) float64, the target face's mesh in the source crop's pixels
    target_expression: list[str]
    source_expression: list[str]
    subject: list[str]

    def __len__(self) -> int:
        return len(self.source)

    def select(self, keep: Tensor) -> PairedFaces:
        rows = keep.nonzero().flatten().tolist()
        return PairedFaces(self.source[rows], self.target[rows], self.source_mesh[rows], self.target_mesh[rows],
                           [self.target_expression[i] for i in rows], [self.source_expression[i] for i in rows],
                           [self.subject[i] for i in rows])


def sequence_pairs(sources: list[str], expressions: list[int]) -> list[tuple[int, int]]:
    """(neutral row, peak row) for every labelled peak whose sequence's neutral frame is in the table."""
    neutral_rows, peaks = {}, []
    for row, (source, expression) in enumerate(zip(sources, expressions)):
        match = _CK_NAME.match(PurePosixPath(source).stem)
        if not match:
            continue
        sequence = match.group(1, 2)
        if expression == EXPRESSIONS.index("neutral"):
            neutral_rows[sequence] = row
        elif expression >= 0:
            peaks.append((sequence, row))
    return [(neutral_rows[sequence], row) for sequence, row in peaks if sequence in neutral_rows]


def build_pairs(images: Tensor, meshes: Tensor, transforms: Tensor, sources: list[str], expressions: list[int],
                rows: list[tuple[int, int]]) -> PairedFaces:
    """Both directions of the sequence pairs ``rows`` (at least one, from :func:`sequence_pairs`) of an
    aligned table: ``images`` (N, S, S, 3) uint8, ``meshes`` (N, 468, 3) and ``transforms`` (N, 2, 3)
    in source-image pixels, as align --mesh writes."""
    size = images.shape[1]
    crop_meshes = apply_affine(transforms.double(), meshes[..., :2].double())
    order = [(a, b) for a, b in rows] + [(b, a) for a, b in rows]
    source_rows, target_rows = [a for a, _ in order], [b for _, b in order]
    stable = list(STABLE_POINTS)
    into_source = estimate_similarity(crop_meshes[target_rows][:, stable], crop_meshes[source_rows][:, stable],
                                      dtype=torch.float64)
    faces = images.permute(0, 3, 1, 2)
    targets = torch.stack([
        warp_faces(faces[row].float(), matrix[None].float(), size)[0].round().clamp(0, 255).to(torch.uint8)
        for row, matrix in zip(target_rows, into_source)])
    return PairedFaces(
        source=faces[source_rows].contiguous(), target=targets, source_mesh=crop_meshes[source_rows],
        target_mesh=apply_affine(into_source, crop_meshes[target_rows]),
        target_expression=[EXPRESSIONS[expressions[row]] for row in target_rows],
        source_expression=[EXPRESSIONS[expressions[row]] for row in source_rows],
        subject=[PurePosixPath(sources[row]).stem[:4] for row in source_rows])


def load_pairs(path: Path | str, source: Path | str | None = None) -> tuple[PairedFaces, Tensor, list[str]]:
    """The pairs of an aligned table with meshes (``exaug align --mesh``), and every neutral face's
    mesh (crop pixels) with its subject: the identity model is fitted on all of them. ``source``: the
    data as the user gave it, named in errors (``path`` may be its aligned cache, a name that means
    nothing to them)."""
    shown = source or path
    with read_faces(path) as table:
        if "mesh" not in table.extra:
            raise ExaugError(f"{shown}: no face meshes in this table (align it with exaug align --mesh)")
        sources, expressions = list(table.source), table.expression.tolist()
        images = torch.from_numpy(table.images[0:len(table)])
        meshes, transforms = torch.from_numpy(table.extra["mesh"]), torch.from_numpy(table.extra["transform"])
    sequences = sequence_pairs(sources, expressions)
    if not sequences:
        reason = _why_unpaired(sources, expressions)
        raise ExaugError(f"{shown}: no neutral/peak pairs of the same sequence found ({reason}); the guided "
                         "generator learns expression motion from CK+-style sequences: a sequence's neutral first "
                         "frame in neutral/ and its labelled peak in an expression folder, both named "
                         "S###_###_######## (subject, sequence, frame: e.g. neutral/S010_006_00000001.png and "
                         "happy/S010_006_00000015.png)")
    pairs = build_pairs(images, meshes, transforms, sources, expressions, sequences)
    rows = [row for row, expression in enumerate(expressions) if expression == EXPRESSIONS.index("neutral")]
    neutral = apply_affine(transforms[rows].double(), meshes[rows][..., :2].double())
    return pairs, neutral, [PurePosixPath(sources[row]).stem[:4] for row in rows]


def _why_unpaired(sources: list[str], expressions: list[int]) -> str:
    """What a table without sequence pairs lacks, so the user knows what to add: CK+-style names,
    neutral frames, or peaks of the neutral frames' own sequences."""
    named = [expression for source, expression in zip(sources, expressions)
             if _CK_NAME.match(PurePosixPath(source).stem)]
    neutral = EXPRESSIONS.index("neutral")
    if not named:
        return f"none of its {len(sources)} faces has a CK+-style name"
    if neutral not in named:
        return f"none of its {len(named)} CK+-named faces is neutral"
    if all(expression in (neutral, -1) for expression in named):
        return f"none of its {len(named)} CK+-named faces is a labelled peak"
    return "no labelled peak has a neutral frame of its own sequence"
