"""scripts/pool_folds.py: folds' tables of held-out faces pooled into one, face by face."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("happy", "sad", "surprise", "fear", "disgust", "anger")
FLOOR = "floor: person-adapted motion + mean ratio image"
NOTES = ["contempt is not judged: FER2013 has no contempt class", "judge: j.pt (fer2013, PrivateTest accuracy 0.5)"]


def _rates(hits: list[bool], labels: list[str]) -> dict:
    rates = {}
    for name in TARGETS:
        mine = [hit for hit, label in zip(hits, labels) if label == name]
        rates[name] = round(sum(mine) / len(mine), 4) if mine else None
    known = [rate for rate in rates.values() if rate is not None]
    rates["mean"] = round(sum(known) / len(known), 4)
    return rates


def _fold(people: list[str], seed: int, model: str) -> tuple[dict, dict]:
    """A table as scripts/eval_table.py --json writes it, from random hits; and its raw faces."""
    rng = random.Random(seed)
    real_subjects = [person for person in people for _ in range(3)]
    real_labels = [rng.choice(TARGETS[:3]) for _ in real_subjects]
    real_hits = [rng.random() < 0.5 for _ in real_subjects]
    subjects = [person for person in people for _ in TARGETS]  # one sequence each
    targets = list(TARGETS) * len(people)
    renderings = {name: {"hits": [rng.random() < chance for _ in targets],
                         "identity": [round(rng.uniform(0.9, 1.0), 4) for _ in targets]}
                  for name, chance in (("input unchanged", 0.0), (FLOOR, 0.4), (model, 0.6))}
    rows = [{"model": "real held-out faces", "judged": _rates(real_hits, real_labels),
             "judged_by_each_judge": [_rates(real_hits, real_labels)],
             "real_counts": {name: real_labels.count(name) for name in TARGETS},
             "identity": {"same_person_neutral_vs_peak": 0.97, "different_people": 0.85}}]
    for name, faces in renderings.items():
        rows.append({"model": name, "judged": _rates(faces["hits"], targets),
                     "judged_by_each_judge": [_rates(faces["hits"], targets)],
                     "identity_source_vs_generated": sum(faces["identity"]) / len(targets),
                     "geometry_error": 0.02 + seed / 100, "sharpness": 1.0 - seed / 10})
    bits = lambda hits: "".join("1" if hit else "0" for hit in hits)  # noqa: E731
    table = {"held_out_subjects": people, "sequences": len(people), "real_faces": len(real_labels),
             "targets": list(TARGETS), "notes": NOTES, "rows": rows,
             "faces": {"real": {"subjects": real_subjects, "labels": real_labels, "hits": bits(real_hits)},
                       "subjects": subjects, "targets": targets,
                       "renderings": {name: {"hits": bits(faces["hits"]), "identity": faces["identity"]}
                                      for name, faces in renderings.items()}}}
    return table, {"real": (real_hits, real_labels), "renderings": renderings, "targets": targets}


def _pool(tmp_path: Path, tables: list[dict]) -> subprocess.CompletedProcess:
    paths = []
    for index, table in enumerate(tables):
        paths.append(tmp_path / f"fold{index}.json")
        paths[-1].write_text(json.dumps(table))
    return subprocess.run([sys.executable, str(REPO / "scripts" / "pool_folds.py"), *map(str, paths),
                           "--json", str(tmp_path / "pooled.json")], capture_output=True, text=True, cwd=REPO)


def test_pooled_rates_are_those_of_every_fold_face_together(tmp_path):
    first, first_faces = _fold([f"S{n:03d}" for n in range(1, 9)], 1, "guided (guided.generator.pt)")
    second, second_faces = _fold([f"S{n:03d}" for n in range(20, 32)], 2, "guided (default.pt)")
    result = _pool(tmp_path, [first, second])
    assert result.returncode == 0, result.stderr
    pooled = json.loads((tmp_path / "pooled.json").read_text())
    real_hits = first_faces["real"][0] + second_faces["real"][0]
    real_labels = first_faces["real"][1] + second_faces["real"][1]
    rows = {row["model"]: row for row in pooled["rows"]}
    assert rows["real held-out faces"]["judged"] == _rates(real_hits, real_labels) | {
        "happy_surprise_sad": rows["real held-out faces"]["judged"]["happy_surprise_sad"]}
    targets = first_faces["targets"] + second_faces["targets"]
    model = rows["guided (one model per fold)"]
    model_hits = (first_faces["renderings"]["guided (guided.generator.pt)"]["hits"]
                  + second_faces["renderings"]["guided (default.pt)"]["hits"])
    assert {name: model["judged"][name] for name in (*TARGETS, "mean")} == _rates(model_hits, targets)
    # The difference from the real faces and from the floor: the pooled rates' own, with a range around it.
    for name in ("happy", "surprise", "sad"):
        point, low, high = model["minus_real"][name]
        assert point == pytest.approx(model["judged"][name] - rows["real held-out faces"]["judged"][name], abs=2e-4)
        assert low <= point <= high
        point, low, high = model["minus_floor"]["judged"][name]
        assert point == pytest.approx(model["judged"][name] - rows[FLOOR]["judged"][name], abs=2e-4)
    # Per-face means, weighted by each fold's faces (8 and 12 sequences).
    assert model["geometry_error"] == pytest.approx((8 * 0.03 + 12 * 0.04) / 20, abs=1e-4)
    assert model["sharpness"] == pytest.approx((8 * 0.9 + 12 * 0.8) / 20, abs=1e-4)
    assert pooled["sequences"] == 20 and len(pooled["held_out_subjects"]) == 20
    assert "| guided (one model per fold) |" in result.stdout


def test_overlapping_or_old_folds_are_one_line_errors(tmp_path):
    first, _ = _fold(["S001", "S002"], 1, "guided (a.pt)")
    second, _ = _fold(["S002", "S003"], 2, "guided (b.pt)")
    result = _pool(tmp_path, [first, second])
    assert result.returncode != 0 and "S002 is also held out" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    del second["faces"]
    second["held_out_subjects"] = ["S003"]
    result = _pool(tmp_path, [first, second])
    assert result.returncode != 0 and "has no faces" in result.stderr and "Traceback" not in result.stderr
