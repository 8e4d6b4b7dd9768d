"""Issue 11's evaluation table: the floor, the old StarGAN default and a guided model on held-out CK+
people, scored by judges the generators never trained with; prints JSON, then a markdown table.

    for seed in 0 1 2; do python scripts/train_fer_judge.py -o runs/fer_judge_$seed.pt --seed $seed; done  # once
    git show a0354d3:exaug/weights/default.pt > /tmp/stargan.pt   # the old StarGAN default
    python scripts/eval_table.py --judge runs/fer_judge_*.pt --stargan /tmp/stargan.pt [--model PATH] [--json OUT]

Several judges vote with their mean probability (:class:`exaug.model.judge.JudgePanel`): one judge,
retrained, moved the bundled model's held-out happy rate from 96% to 85%.

Held-out subjects are those the model (``--model``, default the bundled one) records in its metadata;
the floor (:mod:`exaug.train.floor`) is fitted here on the other subjects' pairs. What each column
means: :mod:`exaug.pipelines.scorecard`. Without dlib (``pip install 'exaug[eval]'``) the identity
columns are skipped with a note. The ``--json`` file also keeps what each face scored, so that
folds (models trained with other people held out) can be pooled: ``scripts/pool_folds.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchlib import DATA
from exaug.errors import ExaugError
from exaug.faces.align import resize_faces
from exaug.faces.identity import FaceEmbedder, missing_reason
from exaug.model.default import DEFAULT_MODEL
from exaug.model.generator import ExpressionGenerator
from exaug.model.guided import CropMesher, GuidedExpressionGenerator
from exaug.model.judge import load_judges
from exaug.pipelines.scorecard import (BOOTSTRAP_ROUNDS, HEADLINE, TARGETS, HeldOut, Scored, held_out_set, hits_of,
                                       real_reference, score_renderer)
from exaug.pipelines.training import training_data
from exaug.train.fer2013 import accuracy, load_fer2013
from exaug.train.floor import fit_floor
from exaug.train.pairs import load_pairs

BEST_FLOOR = "floor: person-adapted motion + mean ratio image"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", type=Path, nargs="+", required=True,
                        help="FER2013 judges (scripts/train_fer_judge.py); several vote with their mean probability")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a guided generator (default: the bundled one)")
    parser.add_argument("--stargan", type=Path, help="an old StarGAN inference file to score beside it")
    parser.add_argument("--table", type=Path, help="exaug align --mesh output of CK+ at 128 px (made and cached if not given)")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--sequences", type=int, help="score only the first N held-out sequences (quick checks)")
    return parser.parse_args(argv)


def evaluation_table(args: argparse.Namespace) -> dict:
    """Every row of the table, as a dict (see :mod:`exaug.pipelines.scorecard`)."""
    started = time.perf_counter()
    judge = load_judges(args.judge, "cpu")
    generator = GuidedExpressionGenerator.load(args.model, "cpu")
    stargan = ExpressionGenerator.load(args.stargan, "cpu") if args.stargan else None
    held_out = set(generator.meta.get("data", {}).get("validation", {}).get("held_out_subjects") or ())
    if not held_out:
        raise ExaugError(f"{args.model}: the model records no held-out subjects (data.validation.held_out_subjects)")
    table = str(args.table or training_data(DATA / "expressions" / "ckplus128", align=True, image_size=128,
                                            template="exaug", cache_dir=None, device=torch.device("cpu"), mesh=True))
    pairs, neutral_meshes, neutral_subjects = load_pairs(table)
    held = held_out_set(table, pairs, held_out)
    if args.sequences is not None:
        held = replace(held, pairs=held.pairs.select(torch.arange(len(held.pairs)) < args.sequences))
    training = pairs.select(torch.tensor([subject not in held_out for subject in pairs.subject]))
    neutral = neutral_meshes[torch.tensor([subject not in held_out for subject in neutral_subjects])]
    reason = missing_reason()
    embedder = None if reason else FaceEmbedder()
    mesher = CropMesher(128)

    def mesh(faces: torch.Tensor) -> torch.Tensor:
        return torch.cat([mesher(faces[i:i + 32])[0] for i in range(0, len(faces), 32)])

    floor = fit_floor(training, neutral)
    floors = {name: replace(floor, adapted=adapted, use_ratio=ratio) for name, adapted, ratio in (
        ("floor: mean motion, warp only", False, False),
        ("floor: mean motion + mean ratio image", False, True),
        (BEST_FLOOR, True, True))}
    baselines = {"input unchanged": lambda faces, meshes, names: faces,
                 **{name: floor.render for name, floor in floors.items()}}
    models = {}
    if stargan is not None:
        models[f"StarGAN ({args.stargan.name}, 64 px, resized)"] = lambda faces, meshes, names: resize_faces(
            stargan.generate(resize_faces(faces, stargan.image_size), list(names)), faces.shape[-1])
    models[f"guided ({args.model.name})"] = lambda faces, meshes, names: generator.render(
        faces, meshes, generator.targets(meshes, list(names), 1.0))
    scored = {name: score_renderer(name, render, held, judge, embedder, mesh) for name, render in baselines.items()}
    scored |= {name: score_renderer(name, render, held, judge, embedder, mesh, floor=scored[BEST_FLOOR])
               for name, render in models.items()}
    rows = [real_reference(held, judge, embedder), *(score.row for score in scored.values())]
    faces = face_by_face(held, judge, scored)
    members = judge.meta.get("panel", [judge.meta])
    accuracies = ", ".join(str(meta.get("private_test_accuracy", {}).get("overall")) for meta in members)
    notes = ["contempt is not judged: FER2013 has no contempt class",
             f"judge: {', '.join(map(str, args.judge))} ({judge.meta.get('data')}, PrivateTest accuracy {accuracies}"
             + (f"; together {accuracy(judge, load_fer2013(DATA / 'expressions' / 'fer2013', 'PrivateTest'))['overall']}"
                if len(members) > 1 else "") + ")"]
    if reason:
        notes.append(reason)
    return {"held_out_subjects": sorted(held_out), "sequences": len(held.pairs), "real_faces": len(held.real_labels),
            "targets": list(TARGETS), "notes": notes, "rows": rows, "faces": faces,
            "seconds": round(time.perf_counter() - started, 1)}


def face_by_face(held: HeldOut, judge, scored: dict[str, Scored]) -> dict:
    """What each face scored, so that tables of models trained on other held-out people (folds of
    ``--val-subjects``) can be pooled (``scripts/pool_folds.py``): the real faces' person, label and
    hit; each rendering's hits and identity, in :meth:`HeldOut.sources` order (their people and
    targets given once). Hits are strings of 0 and 1, to keep the file small."""
    def bits(hits: torch.Tensor) -> str:
        return "".join("1" if hit else "0" for hit in hits.tolist())

    _, _, targets = held.sources()
    return {"real": {"subjects": held.real_subjects, "labels": held.real_labels,
                     "hits": bits(hits_of(judge, held.real_faces, held.real_labels))},
            "subjects": [person for person in held.pairs.subject for _ in TARGETS], "targets": targets,
            "renderings": {name: {"hits": bits(score.hits),
                                  "identity": None if score.identity is None else [round(value, 4) for value in score.identity.tolist()]}
                           for name, score in scored.items()}}


def markdown(result: dict) -> str:
    """The table MODEL_CARD.md shows: judged rates, identity, geometry and sharpness per row."""
    real = result["rows"][0]
    identity = real.get("identity", {})
    head = ["rendering", *[f"FER: {name}" for name in HEADLINE], "FER: mean of 6", "identity (source vs out)",
            "geometry error", "sharpness"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    def points(interval: list[float]) -> str:
        """A difference of rates and its range, ``[point, low, high]``, in points."""
        point, low, high = interval
        return f"{100 * point:+.0f} ({100 * low:+.0f} to {100 * high:+.0f})"

    for row in result["rows"]:
        judged = row["judged"]
        identity_cell = row.get("identity_source_vs_generated")
        if row is real and identity:
            identity_cell = (f"{identity['same_person_neutral_vs_peak']:.3f} (same person, neutral vs peak); "
                             f"{identity['different_people']:.3f} (different people)")
        cells = [row["model"], *[percent(judged[name]) for name in HEADLINE], percent(judged["mean"]),
                 "-" if identity_cell is None else (identity_cell if isinstance(identity_cell, str) else f"{identity_cell:.3f}"),
                 str(row.get("geometry_error", "-")), str(row.get("sharpness", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Judged rate minus the real faces', in points, with the range holding 95% of "
              f"{BOOTSTRAP_ROUNDS} resamplings of the held-out people (`minus_real`):", "",
              "| rendering | " + " | ".join(f"{name} - real" for name in (*HEADLINE, "mean")) + " |",
              "|" + " --- |" * (len(HEADLINE) + 2)]
    for row in result["rows"][1:]:
        cells = [points(row["minus_real"][name]) for name in (*HEADLINE, "mean")]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    compared = [row for row in result["rows"] if "minus_floor" in row]
    if compared:
        lines += ["", f"The same, minus the best floor's ({compared[0]['minus_floor']['floor']}) on the same faces "
                  "(`minus_floor`; identity: source vs output):", "",
                  "| rendering | " + " | ".join(f"{name} - floor" for name in (*HEADLINE, "mean")) + " | identity - floor |",
                  "|" + " --- |" * (len(HEADLINE) + 3)]
        for row in compared:
            judged, identity = row["minus_floor"]["judged"], row["minus_floor"]["identity"]
            cells = [points(judged[name]) for name in (*HEADLINE, "mean")]
            cells.append("-" if identity is None else "{:+.4f} ({:+.4f} to {:+.4f})".format(*identity))
            lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    if len(real["judged_by_each_judge"]) > 1:
        lines += ["", f"By each judge of the panel alone ({', '.join(HEADLINE)}, mean of 6; `judged_by_each_judge`):", "",
                  "| rendering | " + " | ".join(f"judge {k + 1}" for k in range(len(real["judged_by_each_judge"]))) + " |",
                  "|" + " --- |" * (len(real["judged_by_each_judge"]) + 1)]
        for row in result["rows"]:
            cells = [" / ".join(percent(rates[name]) for name in (*HEADLINE, "mean")) for rates in row["judged_by_each_judge"]]
            lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{name} {count}" for name, count in real["real_counts"].items())
    lines.append("")
    lines.append(f"{len(result['held_out_subjects'])} held-out subjects, {result['sequences']} sequences; real faces "
                 f"judged: {counts}. " + "; ".join(result["notes"]) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        result = evaluation_table(args)
    except ExaugError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "faces"}, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
