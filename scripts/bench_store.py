"""What writing an output costs as it grows: the face store's bookkeeping per commit, against the work
between commits, with the visible output republished after every commit and as the store does it.

Each run commits ``--commits`` batches of 16 faces with align --mesh's columns (a 468-point mesh,
landmarks, transform) and their sources' file stamps into a fresh HDF5 output, sleeping ``--work`` seconds between commits as
detection would, and reports the time spent in commits (the total less the sleeps): over the first
and the last tenth of the commits, and in all. "every_commit" republishes after each commit (exaug
before 2026-12-03); "adaptive" is the store as it is (:data:`exaug.io.store.parts.PUBLISH_SHARE`).
Both run in the same process, one after the other. Prints one JSON object. Usage:
  python scripts/bench_store.py [--commits 1500] [--work 0.05]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import exaug.io.store.parts as parts
from exaug.io.store import FaceRows, open_writer

BATCH = 16
STAMP = f"{123_456} {1_796_327_422_512_044_597} {'0' * 64}"  # as long as a real one (exaug.io.digest)


def batch(index: int) -> tuple[FaceRows, list[str]]:
    sources = [f"person{index}/{k}.jpg" for k in range(BATCH)]
    rows = FaceRows(np.zeros((BATCH, 32, 32, 3), np.uint8), [f"person{index}"] * BATCH, np.full(BATCH, -1), sources,
                    np.zeros(BATCH), np.zeros(BATCH, bool),
                    extra={"mesh": np.zeros((BATCH, 468, 3), np.float32), "landmarks": np.zeros((BATCH, 5, 2), np.float32),
                           "transform": np.zeros((BATCH, 2, 3), np.float32)})
    return rows, sources


def run(output: Path, commits: int, work: float) -> dict:
    spent = []
    with open_writer(output, run_key={"bench": 1}, attrs={"size": 32}) as writer:
        for index in range(commits):
            time.sleep(work)
            rows, sources = batch(index)
            started = time.perf_counter()
            writer.commit(rows, sources, stamps={source: STAMP for source in sources})
            spent.append(time.perf_counter() - started)
        started = time.perf_counter()
    finish = time.perf_counter() - started
    tenth = max(1, commits // 10)
    return {"ms_per_commit_first_tenth": round(1000 * float(np.mean(spent[:tenth])), 1),
            "ms_per_commit_last_tenth": round(1000 * float(np.mean(spent[-tenth:])), 1),
            "commit_seconds": round(sum(spent), 1), "share_of_work": round(sum(spent) / (commits * work), 3),
            "finish_seconds": round(finish, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=1500)
    parser.add_argument("--work", type=float, default=0.05, help="seconds of work between commits")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        always = parts.PUBLISH_ALWAYS
        parts.PUBLISH_ALWAYS = float("inf")
        results["every_commit"] = run(Path(folder) / "every.h5", args.commits, args.work)
        parts.PUBLISH_ALWAYS = always
        results["adaptive"] = run(Path(folder) / "adaptive.h5", args.commits, args.work)
    print(json.dumps({"commits": args.commits, "faces": args.commits * BATCH, "work_seconds": args.work, **results},
                     indent=1))


if __name__ == "__main__":
    main()
