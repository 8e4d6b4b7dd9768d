"""exaug augment throughput: end to end (decode, detect, align, generate, write) and generator only.

Prints one JSON object. Usage:
  python scripts/bench_augment.py [--model PATH|untrained] [--copies 4] [--image-size 128]
End to end runs on ../shared/data/faces/people (four photos up to 2048 px) copied --copies times,
all eight expressions, HDF5 output, beside exaug align on the same photos in the same run
(augment_over_align: what generating all eight expressions adds to the face front end; the median of
three alternating align/augment pairs after one untimed run of each, every pair listed, and the
first augment's own time). Generator only: random faces, all eight expressions, by batch size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchlib import DATA, devices, load_model, machine
from exaug.expressions import EXPRESSIONS
from exaug.pipelines.align import AlignOptions, align_dataset
from exaug.pipelines.augment import AugmentOptions, augment_dataset


def end_to_end(generator, copies: int, pairs: int = 3) -> dict:
    work = Path(tempfile.mkdtemp())
    for copy in range(copies):
        for photo in (DATA / "faces" / "people").glob("*/1.jpg"):
            target = work / "in" / photo.parent.name / f"{copy}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target)

    def timed(run) -> tuple[float, object]:
        started = time.perf_counter()
        result = run()
        return time.perf_counter() - started, result

    # exaug align on the same photos, same device, same run: the face front end augment builds on.
    align = lambda name: align_dataset(work / "in", work / name, AlignOptions(device=str(generator.device)),  # noqa: E731
                                       show_progress=False)
    augment = lambda name: augment_dataset(work / "in", work / name, generator, "bench", AugmentOptions(),  # noqa: E731
                                           show_progress=False)
    # Each once first, apart (a dataset's first images pay for loading and first calls, its thousands
    # of others do not; the first augment's time is reported on its own), then alternating pairs, so
    # a busy moment of a noisy machine lands on both sides of a ratio; the median pair is reported.
    align("warm.h5")
    cold_seconds, _ = timed(lambda: augment("cold.h5"))
    runs = []
    for index in range(pairs):
        align_seconds, _ = timed(lambda: align(f"aligned{index}.h5"))
        seconds, summary = timed(lambda: augment(f"out{index}.h5"))
        runs.append((seconds / align_seconds, seconds, align_seconds))
    ratio, seconds, align_seconds = sorted(runs)[len(runs) // 2]
    shutil.rmtree(work)
    return {"source_images": summary.sources, "faces_written": summary.faces, "seconds": round(seconds, 2),
            "align_seconds": round(align_seconds, 2), "augment_over_align": round(ratio, 2),
            "augment_over_align_each_pair": [round(run[0], 2) for run in runs],
            "first_augment_seconds": round(cold_seconds, 2),
            "source_images_per_s": round(summary.sources / seconds, 3),
            "generated_faces_per_s": round(summary.faces * len(EXPRESSIONS) / (len(EXPRESSIONS) + 1) / seconds, 2)}


def generator_only(generator, batch_sizes: list[int], repeats: int) -> dict:
    size, device = generator.image_size, generator.device
    results = {}
    for batch in batch_sizes:
        generator.max_batch = batch * len(EXPRESSIONS)
        faces = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
        generator.generate_all(faces, list(EXPRESSIONS))  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            generator.generate_all(faces, list(EXPRESSIONS))
        if device.type == "cuda":
            torch.cuda.synchronize()
        results[str(batch)] = round(batch * len(EXPRESSIONS) * repeats / (time.perf_counter() - started), 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="generator file, run folder, or 'untrained' (default: bundled)")
    parser.add_argument("--image-size", type=int, default=128, help="for --model untrained")
    parser.add_argument("--copies", type=int, default=4)
    args = parser.parse_args()
    report = {"results": {}}
    for device in devices():
        generator, described = load_model(args.model, device, args.image_size)
        report["model"] = described
        batches = [1, 4, 16] if device == "cpu" else [16, 64, 256, 1024]
        report["results"][device] = {
            **machine(device),
            "image_size": generator.image_size,
            "end_to_end": end_to_end(generator, args.copies),
            "generator_only_faces_per_s_by_batch": generator_only(generator, batches, repeats=2 if device == "cpu" else 10),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
