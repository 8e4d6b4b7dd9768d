"""Score generators on held-out CK+ people against the same person's real peak frames; prints JSON.

    python scripts/eval_guided.py [--model exaug/weights/default.pt] [--stargan OLD.pt] [--table ck128.h5]

For every held-out sequence (subjects the model never saw, named in its metadata), the neutral first
frame is rendered in the sequence's labelled expression and compared with the real peak frame:

* ``geometry_error``: mean distance between the output's face mesh and the real peak's, in eye
  distances (the input itself scores the size of the real motion);
* ``l1_to_peak``: mean absolute grey-level difference to the real peak inside the face;
* ``sharpness``: Laplacian energy of the output / of the input, inside the face (1 = as sharp);
* ``outside_change``: mean grey-level change outside the face outline (hair, background).

Rows: ``input`` (no change), ``mean_motion`` (every face moved by the mean CK+ motion of the
expression, no person adaptation, no painting), ``floor`` (issue 11's floor, :mod:`exaug.train.floor`:
that motion plus the mean ratio image; both fitted here on the other subjects' pairs), ``warp_only``
(the model's person-adapted geometry, warp without painting), the model, and optionally the old
StarGAN model (64 px, resized). ``scripts/eval_table.py`` scores the same renderers with
independent judges (FER2013, dlib). The table is an ``exaug align --mesh``
output of ../shared/data/expressions/ckplus128 at 128 px (made and cached when not given).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from benchlib import DATA
from exaug.faces.align import resize_faces
from exaug.faces.mesh import FACE_OVAL, polygon_mask
from exaug.model.color import decode, encode
from exaug.model.default import DEFAULT_MODEL
from exaug.model.generator import ExpressionGenerator
from exaug.model.guided import GuidedExpressionGenerator
from exaug.model.warp import warp
from exaug.pipelines.scorecard import geometry_error, grey, laplacian_energy
from exaug.pipelines.training import training_data
from exaug.train.floor import fit_floor
from exaug.train.pairs import load_pairs


def score(name: str, outputs: torch.Tensor, pairs, mesher, inside: torch.Tensor) -> dict:
    out, source, peak = grey(outputs), grey(pairs.source), grey(pairs.target)
    outside = 1 - inside
    return {"model": name,
            "geometry_error": round(geometry_error(mesher.meshes(outputs), pairs.target_mesh), 4),
            "l1_to_peak": round(((out - peak).abs() * inside).sum().item() / inside.sum().item(), 2),
            "sharpness": round((laplacian_energy(outputs, inside) / laplacian_energy(pairs.source, inside)).mean().item(), 3),
            "outside_change": round(((out - source).abs() * outside).sum().item() / outside.sum().item(), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--stargan", type=Path, help="an old StarGAN inference file to score beside it")
    parser.add_argument("--table", type=Path, help="exaug align --mesh output of CK+ at 128 px")
    args = parser.parse_args()
    table = args.table or training_data(DATA / "expressions" / "ckplus128", align=True, image_size=128,
                                        template="exaug", cache_dir=None, device=torch.device("cpu"), mesh=True)
    generator = GuidedExpressionGenerator.load(args.model, "cpu")
    held_out = set(generator.meta["data"]["validation"]["held_out_subjects"])
    all_pairs, neutral_meshes, neutral_subjects = load_pairs(table)
    pairs = all_pairs.select(torch.tensor([s in held_out and e == "neutral"
                                           for s, e in zip(all_pairs.subject, all_pairs.source_expression)]))
    floor = fit_floor(all_pairs.select(torch.tensor([s not in held_out for s in all_pairs.subject])),
                      neutral_meshes[torch.tensor([s not in held_out for s in neutral_subjects])], use_ratio=False)
    inside = polygon_mask(pairs.source_mesh, FACE_OVAL, pairs.source.shape[-1])
    model = generator._model
    rows = [score("input", pairs.source, pairs, generator, inside)]
    meshes = pairs.source_mesh.float()
    for name, ratio in (("mean_motion", False), ("floor", True)):
        rendered = replace(floor, use_ratio=ratio).render(pairs.source, meshes, pairs.target_expression)
        rows.append(score(name, rendered, pairs, generator, inside))
    adapted = generator.targets(pairs.source_mesh, pairs.target_expression, 1.0)
    x, chroma = encode(pairs.source, 1)
    rows.append(score("warp_only", decode(warp(x, model.field(meshes, adapted)), chroma), pairs, generator, inside))
    rows.append(score(f"guided ({args.model})", generator.render(pairs.source, pairs.source_mesh.float(), adapted),
                      pairs, generator, inside))
    if args.stargan:
        old = ExpressionGenerator.load(args.stargan, "cpu")
        small = resize_faces(pairs.source, old.image_size)
        rendered = resize_faces(old.generate(small, pairs.target_expression), pairs.source.shape[-1])
        rows.append(score(f"stargan ({args.stargan})", rendered, pairs, generator, inside))
    print(json.dumps({"held_out_subjects": len(held_out), "pairs": len(pairs), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
