"""Issue 11's table pooled over folds: models trained with other held-out people, scored face by face.

One table of 20 held-out people turns on one or two real faces (6 sad ones, 12 smiles): two panels
of judges trained a day apart with the same command moved the real faces' happy rate from 100% to
92% and their sad rate from 17% to 0%. The recipe trained again with other people held out
(``--val-subjects K/6``: every sixth subject by name from the K-th; the shipped model's ``auto`` is
``0/6``) is scored on those people by the same judges (``scripts/eval_table.py --model
RUN/guided.generator.pt --json FOLD.json``); this pools the folds' faces into one table of all their
people: judged rates, and the differences from the real faces and from the floor with 95% ranges
over resamplings of all of them. Each fold's floor is fitted on that fold's training people, as its
model was.

    for k in 0 1 2 3 4 5; do exaug train ../shared/data/expressions/ckplus128 -o runs/fold$k \
        --arch guided --iters 5000 --seed 0 --val-subjects $k/6; python scripts/eval_table.py \
        --judge JUDGES --model runs/fold$k/guided.generator.pt --json fold$k.json; done
    python scripts/pool_folds.py fold?.json [--json pooled.json]

The model's row is each fold's ``guided (...)`` row (one file each); geometry error and sharpness
are the folds' means weighted by their faces, as are the per-judge rates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from eval_table import BEST_FLOOR, markdown
from exaug.pipelines.scorecard import HEADLINE, TARGETS, mean_difference, rate_difference, rates_of

MODEL = "guided (one model per fold)"


def load_folds(paths: list[Path]) -> list[dict]:
    """The folds' tables, checked: each with its faces, no person in two folds, one panel of judges."""
    folds = []
    for path in paths:
        try:
            fold = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: {path}: not a table of scripts/eval_table.py ({err})") from None
        if "faces" not in fold:
            raise SystemExit(f"error: {path}: has no faces (written before eval_table.py kept them: run it again)")
        folds.append(fold)
    seen: dict[str, Path] = {}
    for path, fold in zip(paths, folds):
        for person in fold["held_out_subjects"]:
            if person in seen:
                raise SystemExit(f"error: {path}: {person} is also held out in {seen[person]}; folds must not overlap")
            seen[person] = path
    judges = {fold["notes"][1] for fold in folds}
    if len(judges) > 1:
        raise SystemExit("error: the folds were judged by different panels: " + " / ".join(sorted(judges)))
    return folds


def _model_name(fold: dict) -> str:
    names = [name for name in fold["faces"]["renderings"] if name.startswith("guided (")]
    if len(names) != 1:
        raise SystemExit(f"error: a fold has {len(names)} guided rows; give one model per fold")
    return names[0]


def _weighted(values: list[float | None], weights: list[float]) -> float | None:
    pairs = [(value, weight) for value, weight in zip(values, weights) if value is not None and weight]
    total = sum(weight for _, weight in pairs)
    return round(sum(value * weight for value, weight in pairs) / total, 4) if total else None


def _each_judge(rows: list[dict], weights: list[dict[str, float]]) -> list[dict]:
    """Per-judge rates pooled from the folds' rates, each weighted by that fold's faces of the target."""
    pooled = []
    for judge in range(len(rows[0]["judged_by_each_judge"])):
        rates = {name: _weighted([row["judged_by_each_judge"][judge][name] for row in rows],
                                 [weight[name] for weight in weights]) for name in TARGETS}
        known = [rate for rate in rates.values() if rate is not None]
        headline = [rates[name] for name in HEADLINE if rates[name] is not None]
        rates["mean"] = round(sum(known) / len(known), 4) if known else None
        rates["happy_surprise_sad"] = round(sum(headline) / len(headline), 4) if headline else None
        pooled.append(rates)
    return pooled


def pooled_table(folds: list[dict]) -> dict:
    real_subjects = [person for fold in folds for person in fold["faces"]["real"]["subjects"]]
    real_labels = [label for fold in folds for label in fold["faces"]["real"]["labels"]]
    real_hits = torch.tensor([bit == "1" for fold in folds for bit in fold["faces"]["real"]["hits"]])
    subjects = [person for fold in folds for person in fold["faces"]["subjects"]]
    targets = [target for fold in folds for target in fold["faces"]["targets"]]
    sequences = [fold["sequences"] for fold in folds]
    generated_weights = [{name: count for name in TARGETS} for count in sequences]
    real_rows = [fold["rows"][0] for fold in folds]
    real_row = {"model": "real held-out faces", "judged": rates_of(real_hits, real_labels),
                "judged_by_each_judge": _each_judge(real_rows, [row["real_counts"] for row in real_rows]),
                "real_counts": {name: real_labels.count(name) for name in TARGETS}}
    if all("identity" in row for row in real_rows):
        real_row["identity"] = {key: _weighted([row["identity"][key] for row in real_rows], sequences)
                                for key in ("same_person_neutral_vs_peak", "different_people")}
    names = [name for name in folds[0]["faces"]["renderings"] if not name.startswith("guided (")]
    rows, renderings = [real_row], {}
    for name in [*names, MODEL]:
        per_fold = [name if name != MODEL else _model_name(fold) for fold in folds]
        hits = torch.tensor([bit == "1" for fold, own in zip(folds, per_fold)
                             for bit in fold["faces"]["renderings"][own]["hits"]])
        identities = [fold["faces"]["renderings"][own]["identity"] for fold, own in zip(folds, per_fold)]
        identity = None if any(value is None for value in identities) else torch.tensor(
            [value for values in identities for value in values], dtype=torch.float64)
        fold_rows = [next(row for row in fold["rows"] if row["model"] == own) for fold, own in zip(folds, per_fold)]
        row = {"model": name, "judged": rates_of(hits, targets),
               "judged_by_each_judge": _each_judge(fold_rows, generated_weights),
               "minus_real": rate_difference(hits, targets, subjects, real_hits, real_labels, real_subjects)}
        if identity is not None:
            row["identity_source_vs_generated"] = round(identity.mean().item(), 4)
        if name == MODEL:
            floor_hits, floor_identity = renderings[BEST_FLOOR]
            row["minus_floor"] = {"floor": BEST_FLOOR,
                                  "judged": rate_difference(hits, targets, subjects, floor_hits, targets, subjects),
                                  "identity": None if identity is None or floor_identity is None
                                  else mean_difference(identity, floor_identity, subjects)}
        row["geometry_error"] = _weighted([fold_row["geometry_error"] for fold_row in fold_rows], sequences)
        row["sharpness"] = _weighted([fold_row["sharpness"] for fold_row in fold_rows], sequences)
        renderings[name] = (hits, identity)
        rows.append(row)
    people = sorted({person for fold in folds for person in fold["held_out_subjects"]})
    notes = [*folds[0]["notes"], f"{len(folds)} folds pooled, the model's rows: "
             + ", ".join(_model_name(fold) for fold in folds)]
    return {"held_out_subjects": people, "sequences": sum(sequences), "real_faces": len(real_labels),
            "targets": list(TARGETS), "notes": notes, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", type=Path, nargs="+", help="scripts/eval_table.py --json files, one per fold")
    parser.add_argument("--json", type=Path, help="also write the pooled JSON here")
    args = parser.parse_args(argv)
    result = pooled_table(load_folds(args.tables))
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
