"""Train the FER2013 judge and save it where ``exaug eval --classifier`` and ``scripts/eval_table.py``
read it; prints its PrivateTest accuracy (overall and per class) as JSON.

    python scripts/train_fer_judge.py -o runs/fer_judge_0.pt [--seed 0] [--epochs 15] [--data ../shared/data/expressions/fer2013]

scripts/eval_table.py takes several (seeds 0, 1, 2) and lets them vote.

Trained on the 28,709 ``Training_*`` images only; ``PrivateTest_*`` is never seen in training. The
unlabelled ``PublicTest_*`` images say how much blurrier the training faces are (``matching_blur``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchlib import DATA
from exaug.errors import ExaugError
from exaug.train.fer2013 import accuracy, fer_frame, load_fer2013, matching_blur, train_fer_judge


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA / "expressions" / "fer2013")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()
    try:
        training, private_test = load_fer2013(args.data, "Training"), load_fer2013(args.data, "PrivateTest")
        blur = matching_blur(training, load_fer2013(args.data, "PublicTest"))
        judge = train_fer_judge(training, epochs=args.epochs, seed=args.seed, frame=fer_frame(training), blur=blur,
                                show_progress=True)
        judge.meta["private_test_accuracy"] = accuracy(judge, private_test)
        judge.save(args.output)
    except ExaugError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"output": str(args.output), **judge.meta, "seconds": round(time.perf_counter() - started, 1)},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
