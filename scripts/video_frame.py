"""The README's video picture: one frame of a clip edited by ``exaug video``, its largest faces cropped,
input beside output.

    python scripts/video_frame.py [-o docs/video_frame.png] [--emotion happy] [--frame 30] [--pick 1,2]

Runs ``exaug video`` on the shared 1080p clip from 1.0 to 1.4 s (``--start``/``--end``), takes frame
``--frame`` of the input and of the output, finds its faces with exaug's detector and writes one row
per picked face (``--pick``: ranks by size, 0 the largest): the input crop, then the output crop (each 270 px, the face box grown 1.6x).
Prints the crop boxes and the edit's summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchlib import DATA
from exaug.faces.detect import DetectionOptions
from exaug.io.video import read_frames
from exaug.model.default import DEFAULT_MODEL
from exaug.model.generator import ExpressionGenerator
from exaug.pipelines.timespan import TimeSpan
from exaug.pipelines.video import VideoOptions, edit_video

CROP = 270


def frame_at(path: Path, index: int) -> np.ndarray:
    frames = (frame for chunk in read_frames(path, 8) for frame in chunk.frames)
    for number, frame in enumerate(frames):
        if number == index:
            return frame
    raise SystemExit(f"{path}: has no frame {index}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/video_frame.png"))
    parser.add_argument("--clip", type=Path, default=DATA / "video" / "street_1080p_audio.mp4")
    parser.add_argument("--emotion", default="happy")
    parser.add_argument("--frame", type=int, default=30)
    parser.add_argument("--pick", default="1,2", help="faces by size rank (0: the largest; in the shared clip's frame 30 "
                        "it is a blurred profile)")
    args = parser.parse_args()
    generator = ExpressionGenerator.load(DEFAULT_MODEL, "cpu")
    with tempfile.TemporaryDirectory() as work:
        edited = Path(work) / "edited.mp4"
        summary = edit_video(args.clip, edited, generator,
                             VideoOptions(emotion=args.emotion, span=TimeSpan(1.0, 1.4)), show_progress=False)
        before, after = frame_at(args.clip, args.frame), frame_at(edited, args.frame)
    found = DetectionOptions().detector("cpu", 1).detect([before])[0]
    order = np.argsort([-(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in found.boxes])[[int(rank) for rank in args.pick.split(",")]]
    rows, boxes = [], []
    for x0, y0, x1, y1 in (found.boxes[index] for index in order):
        side = 1.6 * max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = tuple(round(value) for value in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
        boxes.append(box)
        crops = [Image.fromarray(image).crop(box).resize((CROP, CROP), Image.LANCZOS) for image in (before, after)]
        rows.append(np.concatenate([np.asarray(crop) for crop in crops], 1))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(args.output)
    print(json.dumps({"output": str(args.output), "frame": args.frame, "boxes": boxes,
                      "faces_edited": summary.faces_edited, "seconds": round(summary.seconds, 1)}, indent=1))


if __name__ == "__main__":
    main()
