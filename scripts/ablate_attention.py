"""What the GANimation attention mask does: two identical small trainings, with and without it.

Prints one JSON object: for each, the change outside the face's inner region and the cycle error
(grey levels, on held-out CK+ subjects) and the expression classifier's accuracy on generated
faces. Usage: python scripts/ablate_attention.py [--iters 400] [--out runs/ablation]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchlib import DATA
from exaug.model.generator import ExpressionGenerator
from exaug.pipelines.evaluate import EvalOptions, evaluate
from exaug.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = parser.parse_args()
    data = DATA / "expressions" / "ckplus128"
    classifier = args.out / "classifier.pt"
    report = {"data": str(data), "iters": args.iters, "results": {}}
    for attention in (True, False):
        run = args.out / ("attention" if attention else "plain")
        config = TrainConfig(data=str(data), output=str(run), image_size=64, channels=1, conv_dim=16, repeat_num=2,
                             attention=attention, iters=args.iters, batch_size=8, align=False, balance=True,
                             val_subjects="10", seed=0, sample_every=args.iters, save_every=args.iters,
                             log_every=50, workers=0, device="cpu")
        checkpoint = train(config)
        options = EvalOptions(val_subjects="10", seed=0, epochs=3, align=False, device="cpu", show_progress=False,
                              classifier=classifier if classifier.exists() else None,
                              save_classifier=None if classifier.exists() else classifier)
        result = evaluate(ExpressionGenerator.load(checkpoint, "cpu"), data, options)
        report["results"]["attention" if attention else "no_attention"] = {
            "outside_change_grey_levels": result.outside_change,
            "cycle_error_grey_levels": result.cycle_error,
            "generated_accuracy": result.generated_overall,
            "real_accuracy": result.real_overall,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
