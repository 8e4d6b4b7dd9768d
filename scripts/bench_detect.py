"""Detection throughput: exaug's batched detector against plain per-image facenet-pytorch MTCNN.

Prints one JSON object. Usage: python scripts/bench_detect.py [--repeat 4] [--batch-size 8] (CPU, and CUDA when present)
The images are ../shared/data/faces (five photos, 630 px to 2048 px), repeated to make a workload.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image

from benchlib import DATA, devices, machine
from exaug.faces import FaceDetector
from exaug.io.images import load_image
from exaug.io.sources import discover_sources


def images_per_second(run, images: list[np.ndarray]) -> tuple[float, int]:
    run(images[:2])  # warm-up: weights to device, kernels chosen
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    faces = run(images)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - started), faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA / "faces")
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    images = [load_image(source.path) for source in discover_sources(args.data)] * args.repeat
    report = {"images": len(images), "sizes": sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images}),
              "results": {}}
    for device in devices():
        detector = FaceDetector(device, batch_size=args.batch_size)
        exaug_rate, exaug_faces = images_per_second(lambda batch: sum(map(len, detector.detect(batch))), images)
        plain = MTCNN(keep_all=True, device=device)

        def per_image(batch: list[np.ndarray]) -> int:
            found = [plain.detect(Image.fromarray(image))[0] for image in batch]
            return sum(0 if boxes is None else len(boxes) for boxes in found)

        plain_rate, plain_faces = images_per_second(per_image, images)
        report["results"][device] = {
            **machine(device),
            "exaug_batched_images_per_s": round(exaug_rate, 3),
            "plain_mtcnn_per_image_images_per_s": round(plain_rate, 3),
            "speedup": round(exaug_rate / plain_rate, 2),
            "faces_found": {"exaug": exaug_faces, "plain": plain_faces},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
