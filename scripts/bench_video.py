"""exaug video throughput on the shared 1080p clip, split by stage (decode, detect, generate, blend, encode).

Prints one JSON object. Usage: python scripts/bench_video.py [--model PATH|untrained] [--preset medium]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchlib import DATA, devices, load_model, machine
from exaug.io.video import probe
from exaug.faces.detect import DetectionOptions
from exaug.pipelines.video import STAGES, VideoOptions, edit_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="generator file, run folder, or 'untrained' (default: bundled)")
    parser.add_argument("--image-size", type=int, default=128, help="for --model untrained")
    parser.add_argument("--clip", type=Path, default=DATA / "video" / "street_1080p_audio.mp4")
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--max-side", type=int, default=DetectionOptions.max_side, help="detection resolution")
    args = parser.parse_args()
    info = probe(args.clip)
    report = {"clip": {"path": str(args.clip), "size": f"{info.width}x{info.height}", "frames": info.frames,
                       "fps": float(info.fps)}, "max_side": args.max_side, "results": {}}
    for device in devices():
        generator, described = load_model(args.model, device, args.image_size)
        report["model"] = described
        output = Path(tempfile.mkdtemp()) / "out.mp4"
        summary = edit_video(args.clip, output, generator,
                             VideoOptions(emotion="happy", preset=args.preset, chunk_size=args.chunk_size,
                                          detection=DetectionOptions(max_side=args.max_side)),
                             show_progress=False)
        report["results"][device] = {
            **machine(device),
            "frames_per_s": round(summary.frames_per_second, 3),
            "seconds": round(summary.seconds, 2),
            "faces_edited": summary.faces_edited,
            "stage_seconds": {stage: round(summary.stage_seconds[stage], 2) for stage in STAGES},
            "stage_frames_per_s": {stage: round(summary.frames / max(summary.stage_seconds[stage], 1e-9), 2)
                                   for stage in STAGES},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
