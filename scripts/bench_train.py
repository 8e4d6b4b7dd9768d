"""Training throughput of the default 128px model, printed as one JSON object.

    python scripts/bench_train.py [--devices cpu,cuda] [--steps N] [--warmup N]

An iteration is one D step (plus a G step every n_critic-th, as in training), so measured windows
are whole multiples of n_critic. images/s counts the real faces consumed (batch size per
iteration). The batch is random pixels: the cost of a step does not depend on what the faces show,
and the number then measures the model, not the disk.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import torch

from exaug.train.config import TrainConfig
from exaug.train.trainer import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: TrainConfig, device: torch.device, warmup_cycles: int, cycles: int) -> dict[str, object]:
    """Iterations/s over ``cycles`` x n_critic iterations after ``warmup_cycles`` x n_critic."""
    torch.manual_seed(0)
    trainer = Trainer(config, device)
    size, batch = config.image_size, config.batch_size
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 8, (batch,))
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    step = 0
    for _ in range(warmup_cycles * config.n_critic):
        trainer.step(images, labels, step)
        step += 1
    _sync(device)
    started = time.perf_counter()
    for _ in range(cycles * config.n_critic):
        trainer.step(images, labels, step)
        step += 1
    _sync(device)
    seconds = time.perf_counter() - started
    iterations = cycles * config.n_critic
    result: dict[str, object] = {
        "device": str(device),
        "iterations": iterations,
        "iters_per_s": round(iterations / seconds, 4),
        "images_per_s": round(iterations * batch / seconds, 2),
        "seconds_per_iter": round(seconds / iterations, 4),
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["amp"] = config.amp
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    else:
        result["threads"] = torch.get_num_threads()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu,cuda", help="comma list; cuda is skipped when absent")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.__dataclass_fields__["batch_size"].default)
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"])
    parser.add_argument("--cycles", type=int, default=None,
                        help="measured n_critic-cycles (default 1 on CPU, 10 on CUDA)")
    parser.add_argument("--warmup-cycles", type=int, default=1)
    args = parser.parse_args()

    config = TrainConfig(data="", output="", image_size=args.image_size, batch_size=args.batch_size, amp=args.amp)
    results = []
    for name in args.devices.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            continue
        device = torch.device(name)
        cycles = args.cycles or (10 if device.type == "cuda" else 1)
        results.append(measure(config, device, args.warmup_cycles, cycles))
    print(json.dumps({
        "torch": torch.__version__,
        "model": asdict(config.model),
        "batch_size": config.batch_size,
        "n_critic": config.n_critic,
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
