"""Score generators on held-out CK+ people against the same person's real peak frames; prints JSON.

    python scripts/eval_guided.py [--model exaug/weights/default.pt] [--stargan OLD.pt] [--table ck128.h5]

For every held-out sequence (subjects the model never saw, named in its metadata), the neutral first
frame is rendered in the sequence's labelled expression and compared with the real peak frame:

* ``geometry_error``: mean distance between the output's face mesh and the real peak's, in eye
  distances (the input itself scores the size of the real motion);
* ``l1_to_peak``: mean absolute grey-level difference to the real peak inside the face;
* ``sharpness``: Laplacian energy of the output / of the input, inside the face (1 = as sharp);
* ``outside_change``: mean grey-level change outside the face outline (hair, background).

Rows: ``input`` (no change: the floor any model must beat), ``mean_motion`` (every face moved by the
mean CK+ motion of the expression, no person adaptation, no painting: the "mean flow" floor without
its ratio image), ``warp_only`` (the model's person-adapted geometry, warp without painting), the
model, and optionally the old StarGAN model (64 px, resized). The table is an ``exaug align --mesh``
output of ../shared/data/expressions/ckplus128 at 128 px (made and cached when not given).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from benchlib import DATA
from exaug.faces.align import resize_faces
from exaug.faces.mesh import FACE_OVAL, LEFT_EYE, RIGHT_EYE
from exaug.model.color import decode, encode
from exaug.model.default import DEFAULT_MODEL
from exaug.model.generator import ExpressionGenerator
from exaug.model.guided import GuidedExpressionGenerator
from exaug.pipelines.training import training_data
from exaug.train.pairs import load_pairs

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]


def face_mask(meshes: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, S, S) inside the face outline (polygon test on the mesh's FACE_OVAL)."""
    polygon = meshes[:, list(FACE_OVAL), :2].float()
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    x, y = xs.reshape(1, -1, 1), ys.reshape(1, -1, 1)
    x0, y0 = polygon[:, None, :, 0], polygon[:, None, :, 1]
    x1, y1 = polygon.roll(-1, 1)[:, None, :, 0], polygon.roll(-1, 1)[:, None, :, 1]
    crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / (y1 - y0 + 1e-9) + x0)
    return (crosses.sum(-1) % 2 == 1).reshape(-1, 1, size, size).float()


def grey(faces: torch.Tensor) -> torch.Tensor:
    return encode(faces, 1)[0] * 127.5 + 127.5


def score(name: str, outputs: torch.Tensor, pairs, mesher, inside: torch.Tensor) -> dict:
    out, source, peak = grey(outputs), grey(pairs.source), grey(pairs.target)
    meshes = mesher.meshes(outputs)
    eyes = (pairs.target_mesh[:, list(RIGHT_EYE)].mean(1) - pairs.target_mesh[:, list(LEFT_EYE)].mean(1)).norm(dim=-1)
    geometry = ((meshes.double() - pairs.target_mesh).norm(dim=-1).mean(1) / eyes).mean()
    energy = lambda x: (F.conv2d(x, LAPLACIAN, padding=1) ** 2 * inside).sum((1, 2, 3))  # noqa: E731
    outside = 1 - inside
    return {"model": name,
            "geometry_error": round(geometry.item(), 4),
            "l1_to_peak": round(((out - peak).abs() * inside).sum().item() / inside.sum().item(), 2),
            "sharpness": round((energy(out) / energy(source)).mean().item(), 3),
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
    pairs, _, _ = load_pairs(table)
    pairs = pairs.select(torch.tensor([s in held_out and e == "neutral" for s, e in zip(pairs.subject, pairs.source_expression)]))
    inside = face_mask(pairs.source_mesh, pairs.source.shape[-1])
    model = generator._model
    rows = [score("input", pairs.source, pairs, generator, inside)]
    adapted = generator.targets(pairs.source_mesh, pairs.target_expression, 1.0)
    regression = model.geometry.motion_regression
    model.geometry.motion_regression = torch.zeros_like(regression)
    mean_motion = generator.targets(pairs.source_mesh, pairs.target_expression, 1.0)
    model.geometry.motion_regression = regression
    for name, target in (("mean_motion", mean_motion), ("warp_only", adapted)):
        x, chroma = encode(pairs.source, 1)
        field = model.field(pairs.source_mesh.float(), target)
        from exaug.model.warp import warp
        rows.append(score(name, decode(warp(x, field), chroma), pairs, generator, inside))
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
