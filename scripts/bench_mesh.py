"""Face mesh throughput: faces/s of exaug.faces.mesh.FaceMesh at batch 1, 16 and 64, per device.

Prints one JSON object. Usage:
  python scripts/bench_mesh.py [--repeats 5] [--size 192]
Inputs are real CK+ crops (../shared/data/expressions/ckplus128), resized by the module to 192 as
in use. A "cuda" entry is added when a GPU is present (fp32, and bf16 autocast).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchlib import DATA, devices, machine
from exaug.faces.mesh import FaceMesh
from exaug.io.images import load_image


def faces_per_second(mesh: FaceMesh, faces: torch.Tensor, batch: int, repeats: int, autocast: bool = False) -> float:
    device = faces.device
    inputs = faces[:batch]
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
        mesh(inputs)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            mesh(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return round(batch * repeats / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=192, help="crop size fed to the module")
    parser.add_argument("--batches", default="1,16,64")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    paths = sorted((DATA / "expressions" / "ckplus128" / "surprise").glob("S*.png"))[:max(batches)]
    faces = torch.stack([torch.from_numpy(load_image(p)).permute(2, 0, 1) for p in paths])
    faces = torch.nn.functional.interpolate(faces.float(), size=args.size, mode="bilinear").round().to(torch.uint8)
    report = {"crop_size": args.size, "results": {}}
    for device in devices():
        mesh = FaceMesh().to(device)
        on_device = faces.to(device)
        entry = {"machine": machine(device),
                 "faces_per_s": {str(b): faces_per_second(mesh, on_device, b, args.repeats) for b in batches}}
        if device == "cuda":
            entry["faces_per_s_bf16"] = {str(b): faces_per_second(mesh, on_device, b, args.repeats, True)
                                         for b in batches}
        report["results"][device] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
