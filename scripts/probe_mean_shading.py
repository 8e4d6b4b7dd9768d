"""How much of the expressions' mean shading the guided model's shader makes, and what the judges
make of the rest: a probe for the next model, not a renderer exaug ships.

The floor (:mod:`exaug.train.floor`) multiplies each face by the mean ratio image of the target
expression over the training pairs (real peak / neutral warped by its own motion). For each of the
six judged expressions this prints:

* ``shader``: the model's log-gain on the held-out neutral faces asked for it against the mean log
  ratio averaged to the shader's 32 px, inside the target face's outline: their mean sizes, the
  share of the mean pattern in the gain (least squares) and their correlation;
* ``judged``: the panel's hits and mean probability of the target on the held-out faces for the
  model, the floor, and the model's faces times the mean ratio, whole, averaged to 32 px and only
  its detail finer than that;

then two scorecard rows (:func:`exaug.pipelines.scorecard.score_renderer`, against the best floor):
the model's faces times the 32-px mean ratio (the mean shading on top of the shader's), and the model
with the shader's gain replaced by the target's 32-px mean log ratio. Prints JSON. Usage (judges as
for eval_table.py):

    python scripts/probe_mean_shading.py --judge runs/fer_judge_0.pt runs/fer_judge_1.pt runs/fer_judge_2.pt
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from benchlib import DATA
from exaug.expressions import EXPRESSIONS
from exaug.faces.identity import FaceEmbedder, missing_reason
from exaug.model.color import decode, encode
from exaug.model.default import DEFAULT_MODEL
from exaug.model.guided import CropMesher, GuidedExpressionGenerator
from exaug.model.judge import load_judges
from exaug.model.painter import SHADE_SIZE
from exaug.model.warp import warp
from exaug.pipelines.scorecard import TARGETS, held_out_set, score_renderer
from exaug.pipelines.training import training_data
from exaug.train.floor import fit_floor, with_ratio
from exaug.train.pairs import load_pairs


def times_ratio(faces: Tensor, ratio: Tensor) -> Tensor:
    """uint8 faces with their luma times ``ratio`` (one (1, S, S) per face), as the floor applies it."""
    luma, chroma = encode(faces, 1)
    return decode(with_ratio(luma, ratio).clamp(-1, 1), chroma)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", type=Path, nargs="+", required=True)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = parser.parse_args()
    judge = load_judges(args.judge, "cpu")
    generator = GuidedExpressionGenerator.load(args.model, "cpu")
    model = generator._model
    held_out = set(generator.meta["data"]["validation"]["held_out_subjects"])
    table = str(training_data(DATA / "expressions" / "ckplus128", align=True, image_size=128, template="exaug",
                              cache_dir=None, device=torch.device("cpu"), mesh=True))
    pairs, neutral_meshes, neutral_subjects = load_pairs(table)
    held = held_out_set(table, pairs, held_out)
    training = pairs.select(torch.tensor([subject not in held_out for subject in pairs.subject]))
    neutral = neutral_meshes[torch.tensor([subject not in held_out for subject in neutral_subjects])]
    floor = replace(fit_floor(training, neutral), adapted=True, use_ratio=True)
    size = floor.ratio.shape[-1]
    coarse = F.interpolate(F.adaptive_avg_pool2d(floor.ratio.float(), SHADE_SIZE), size=(size, size),
                           mode="bilinear", align_corners=False)
    faces, meshes = held.pairs.source, held.pairs.source_mesh.float()

    def model_render(faces: Tensor, meshes: Tensor, names) -> Tensor:
        return generator.render(faces, meshes, generator.targets(meshes, list(names), 1.0))

    report: dict = {"model": str(args.model), "judge": [str(path) for path in args.judge], "expressions": {}}
    with torch.no_grad():
        for name in TARGETS:
            index = EXPRESSIONS.index(name)
            names = [name] * len(faces)
            target = generator.targets(meshes, names, 1.0)
            field = model.field(meshes, target).float()
            outline = model.shade_outline(target)
            gain = model.shade(encode(F.adaptive_avg_pool2d(faces.float(), SHADE_SIZE), 1)[0],
                               warp(encode(faces, 1)[0], field), field, model.codes(meshes, target), outline)
            mean = F.adaptive_avg_pool2d(floor.ratio[index:index + 1].float().log(), SHADE_SIZE).expand_as(gain)
            gain, mean = gain * outline, mean * outline
            rendered = model_render(faces, meshes, names)
            variants = {"model": rendered, "floor": floor.render(faces, meshes, names),
                        "model x mean ratio": times_ratio(rendered, floor.ratio[index]),
                        "model x mean ratio at 32 px": times_ratio(rendered, coarse[index]),
                        "model x mean ratio finer than 32 px": times_ratio(rendered, floor.ratio[index] / coarse[index])}
            report["expressions"][name] = {
                "shader": {"mean_abs_log_gain": round(gain.abs().mean().item(), 4),
                           "mean_abs_mean_log_ratio": round(mean.abs().mean().item(), 4),
                           "share_of_mean_pattern": round(((gain * mean).sum() / (mean * mean).sum()).item(), 2),
                           "correlation": round(F.cosine_similarity((gain - gain.mean()).flatten(),
                                                                    (mean - mean.mean()).flatten(), dim=0).item(), 2)},
                "judged": {variant: {"hits": int((judge.predict(out) == index).sum()), "of": len(out),
                                     "mean_probability": round(judge.probabilities(out)[:, index].mean().item(), 3)}
                           for variant, out in variants.items()}}
    embedder = None if missing_reason() else FaceEmbedder()
    mesher = CropMesher(128)

    def mesh(faces: Tensor) -> Tensor:
        return torch.cat([mesher(faces[i:i + 32])[0] for i in range(0, len(faces), 32)])

    def with_mean_shading(faces: Tensor, meshes: Tensor, names) -> Tensor:
        return times_ratio(model_render(faces, meshes, names), coarse[[EXPRESSIONS.index(name) for name in names]])

    mean_log = F.adaptive_avg_pool2d(floor.ratio.float().log(), SHADE_SIZE)
    shading: dict[str, Tensor] = {}

    def mean_shade(faces: Tensor, warped: Tensor, field: Tensor, codes: Tensor, outline: Tensor) -> Tensor:
        return (shading["log_gain"] * outline).clamp(-0.5, 0.5)

    def shaded_by_the_mean(faces: Tensor, meshes: Tensor, names) -> Tensor:
        """The model with its shader's gain replaced by each target's mean log ratio (rendered one
        expression at a time: the shader has no label to read it from)."""
        out = torch.empty_like(faces)
        model.shade = mean_shade  # this probe's generator only
        try:
            for name in sorted(set(names)):
                rows = torch.tensor([other == name for other in names])
                shading["log_gain"] = mean_log[EXPRESSIONS.index(name)]
                out[rows] = model_render(faces[rows], meshes[rows], [name] * int(rows.sum()))
        finally:
            del model.shade
        return out

    best_floor = score_renderer("floor: person-adapted motion + mean ratio image", floor.render, held, judge, embedder, mesh)
    report["rows"] = [score_renderer(name, render, held, judge, embedder, mesh, floor=best_floor).row for name, render in (
        ("model x mean ratio at 32 px", with_mean_shading), ("model, shader replaced by the mean shading", shaded_by_the_mean))]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
