"""exaug video against a plain transcode of the same clip, measured in the same run: speed and picture.

For each clip (the shared 1080p clip; with ``--mjpeg`` also a 720x480 MJPEG/AVI clip made from it)
and each device, this reports:

* exaug's frames/s and its per-stage split (decode, detect, track, generate, blend, encode; decode
  runs in a thread of its own, detect and track in a second, the last three in a third, so the
  stages' seconds add up to more than the run's);
* a plain PyAV decode + libx264 encode of the clip at the same crf and preset, and the ratio: the
  median of ``--pairs`` alternating transcode / exaug runs (after an untimed half second of exaug),
  every pair listed, so a busy moment of a noisy machine lands on both sides of the ratio;
* the faces edited and the frames MTCNN ran on, against the faces a per-frame MTCNN pass over the
  input finds (the reference), and against those of them it also finds in a neighbouring frame
  (per-frame MTCNN itself flickers on small or half-hidden faces: found in one frame, not the next);
  how many of the reference faces exaug finds, of all of them and of those in a neighbouring frame
  too, and how many it finds that the reference lacks;
* face-region sharpness: the Laplacian energy of the output inside the reference face boxes over
  the input's (1.0 keeps all detail);
* flicker: the mean frame-to-frame absolute change inside the face boxes, in grey levels, for the
  output and the input, and their difference (what the edit adds; 0 is as steady as the input).

Prints one JSON object. Usage:
python scripts/bench_video.py [--model PATH|untrained] [--preset medium] [--crf 18] [--mjpeg] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from benchlib import DATA, devices, load_model, machine
from exaug.faces.detect import DetectionOptions, ImageFaces
from exaug.faces.follow import FaceFollower, FollowOptions
from exaug.faces.mesh import FaceMesh
from exaug.faces.track import box_iou
from exaug.io.images import LUMA
from exaug.io.video import probe, read_frames
from exaug.pipelines.scorecard import laplacian_energy
from exaug.pipelines.timespan import TimeSpan
from exaug.pipelines.video import STAGES, VideoOptions, edit_video


def make_mjpeg_clip(source: Path, output: Path, size: tuple[int, int] = (720, 480)) -> Path:
    """The centre of ``source`` cropped to the aspect of ``size`` and scaled to it, as MJPEG in AVI
    (video only): the kind of file old cameras and capture cards write."""
    width, height = size
    with av.open(str(source)) as container, av.open(str(output), mode="w", format="avi") as out:
        video = container.streams.video[0]
        stream = out.add_stream("mjpeg", rate=video.average_rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        stream.bit_rate = 12_000_000
        for frame in container.decode(video):
            image = frame.to_image()
            crop = min(image.width, image.height * width / height)
            left = (image.width - crop) / 2
            box = (left, 0, left + crop, image.height)
            scaled = image.resize(size, Image.Resampling.BICUBIC, box=box, reducing_gap=2.0)
            out.mux(stream.encode(av.VideoFrame.from_image(scaled)))
        out.mux(stream.encode(None))
    return output


def plain_transcode(clip: Path, output: Path, crf: int, preset: str) -> dict[str, float]:
    """Decode and re-encode the video with libx264, nothing else: what any edit costs at least."""
    started = time.perf_counter()
    frames = 0
    with av.open(str(clip)) as container, av.open(str(output), mode="w") as out:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        stream = out.add_stream("libx264", rate=video.average_rate, options={"crf": str(crf), "preset": preset})
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        stream.thread_type = "AUTO"
        for frame in container.decode(video):
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
            frames += 1
        out.mux(stream.encode(None))
    seconds = time.perf_counter() - started
    return {"frames_per_s": round(frames / seconds, 2), "seconds": round(seconds, 2)}


def reference_faces(clip: Path, detection: DetectionOptions, device: str) -> list[ImageFaces]:
    """MTCNN on every frame of the input: the faces a per-frame detector finds."""
    detector = detection.detector(device, 16)
    return [faces for chunk in read_frames(clip, 16) for faces in detector.detect(list(chunk.frames))]


def steady_faces(reference: list[ImageFaces], overlap: float = 0.3) -> list[np.ndarray]:
    """For each frame, which faces of a per-frame detection it also finds in the previous or the next
    frame (a box overlapping by ``overlap``): the faces a tracker should hold, without the detector's
    flicker."""
    steady = []
    for index, found in enumerate(reference):
        neighbours = [reference[j].boxes for j in (index - 1, index + 1)
                      if 0 <= j < len(reference) and len(reference[j])]
        steady.append(np.array([any(box_iou(box[None], boxes).max() > overlap for boxes in neighbours)
                                for box in found.boxes], dtype=bool))
    return steady


def faces_matched(clip: Path, reference: list[ImageFaces], steady: list[np.ndarray], options: VideoOptions,
                  device: str) -> dict[str, int]:
    """Which faces exaug video finds, against the per-frame ``reference`` (all of them, and those also
    found in a neighbouring frame: ``steady``, from :func:`steady_faces`): the follower it runs (same
    options), run again on its own to keep each face's box; a followed face is a reference face where
    their boxes overlap by 0.3 (the follower's own matching threshold)."""
    follower = FaceFollower(options.detection.detector(device, 1), FaceMesh(),
                            FollowOptions(detect_every=options.detect_every), fps=float(probe(clip).fps or 25))
    followed = [faces for chunk in read_frames(clip, options.chunk_size)
                for faces in follower.update_many(chunk.frames, chunk.times)]
    matched = steady_matched = extra = 0
    for found, steady_here, faces in zip(reference, steady, followed):
        boxes = np.stack([face.box for face in faces]) if faces else np.zeros((0, 4))
        hits = np.array([box_iou(box[None], boxes).max(initial=0.0) >= 0.3 for box in found.boxes], dtype=bool)
        matched += int(hits.sum())
        steady_matched += int((hits & steady_here).sum())
        extra += sum(box_iou(face.box[None], found.boxes).max(initial=0.0) < 0.3 for face in faces)
    return {"per_frame_faces_found": matched, "per_frame_faces_in_a_neighbouring_frame_found": steady_matched,
            "faces_found_that_per_frame_detection_missed": int(extra)}


def _luma(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float32) @ np.array(LUMA, np.float32)


def _boxes(faces: ImageFaces, shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Face boxes as integer slices clipped to the frame; boxes under 8 px are left out."""
    height, width = shape[:2]
    clipped = []
    for x0, y0, x1, y1 in np.round(faces.boxes).astype(int):
        x0, y0, x1, y1 = max(x0, 1), max(y0, 1), min(x1, width - 1), min(y1, height - 1)
        if x1 - x0 >= 8 and y1 - y0 >= 8:
            clipped.append((x0, y0, x1, y1))
    return clipped


def _detail(frame: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Laplacian energy (what blurring removes) inside ``box``, as the scorecard measures faces."""
    x0, y0, x1, y1 = box
    region = torch.from_numpy(np.ascontiguousarray(frame[y0 - 1:y1 + 1, x0 - 1:x1 + 1])).permute(2, 0, 1)[None]
    inside = torch.zeros(1, 1, *region.shape[-2:])
    inside[..., 1:-1, 1:-1] = 1  # the box itself; its one-pixel frame only feeds the Laplacian
    return float(laplacian_energy(region, inside))


def face_region_quality(clip: Path, output: Path, faces: list[ImageFaces]) -> dict[str, float]:
    """Sharpness (output/input Laplacian energy) and flicker (mean |frame t - frame t-1| in grey
    levels, output and input) inside the reference face boxes of each frame."""
    energy = np.zeros(2)
    change, boxes_compared = np.zeros(2), 0
    previous: tuple[np.ndarray, np.ndarray] | None = None
    frames = (pair for chunks in zip(read_frames(clip, 8), read_frames(output, 8))
              for pair in zip(chunks[0].frames, chunks[1].frames))
    for index, (before, after) in enumerate(frames):
        lumas = (_luma(before), _luma(after))
        for box in _boxes(faces[index], before.shape):
            energy += [_detail(frame, box) for frame in (before, after)]
            if previous is not None:
                x0, y0, x1, y1 = box
                change += [np.abs(now[y0:y1, x0:x1] - then[y0:y1, x0:x1]).mean() for now, then in zip(lumas, previous)]
                boxes_compared += 1
        previous = lumas
    flicker_in, flicker_out = change / max(boxes_compared, 1)
    return {"sharpness_output_over_input": round(float(energy[1] / max(energy[0], 1e-9)), 3),
            "flicker_input": round(float(flicker_in), 3), "flicker_output": round(float(flicker_out), 3),
            "flicker_added": round(float(flicker_out - flicker_in), 3)}


def bench_clip(clip: Path, args: argparse.Namespace, workdir: Path) -> dict:
    info = probe(clip)
    detection = DetectionOptions(max_side=args.max_side)
    reference = reference_faces(clip, detection, "cpu")
    steady = steady_faces(reference)
    report = {"clip": {"path": str(clip), "size": f"{info.width}x{info.height}", "codec": info.codec,
                       "frames": info.frames, "fps": float(info.fps)},
              "per_frame_detection": {"faces": sum(map(len, reference)),
                                      "faces_also_in_a_neighbouring_frame": int(sum(map(np.sum, steady))),
                                      "frames_with_faces": sum(len(found) > 0 for found in reference)},
              "results": {}}
    for device in devices():
        generator, described = load_model(args.model, device, args.image_size)
        report["model"] = described
        output = workdir / f"exaug_{device}.mp4"
        options = VideoOptions(emotion="happy", crf=args.crf, preset=args.preset, chunk_size=args.chunk_size,
                               detection=detection, detect_every=args.detect_every)
        # One untimed run of the first half second (the networks' first calls), then alternating
        # pairs, so a busy moment of a noisy machine lands on both sides of a ratio; the median
        # pair is reported, every pair listed.
        edit_video(clip, output, generator, replace(options, span=TimeSpan(None, 0.5)), show_progress=False)
        pairs = []
        for _ in range(args.pairs):
            plain = plain_transcode(clip, workdir / "plain.mp4", args.crf, args.preset)
            summary = edit_video(clip, output, generator, options, show_progress=False)
            pairs.append((plain["frames_per_s"] / max(summary.frames_per_second, 1e-9), plain, summary))
        ratio, plain, summary = sorted(pairs, key=lambda pair: pair[0])[len(pairs) // 2]
        report["results"][device] = {
            **machine(device),
            "frames_per_s": round(summary.frames_per_second, 3),
            "seconds": round(summary.seconds, 2),
            "plain_transcode": plain,
            "times_plain_transcode": round(ratio, 2),
            "pairs": [{"seconds": round(pair_summary.seconds, 2), "plain_transcode_seconds": pair_plain["seconds"],
                       "times_plain_transcode": round(pair_ratio, 2)} for pair_ratio, pair_plain, pair_summary in pairs],
            "faces_found": sum(summary.faces_per_frame),
            **faces_matched(clip, reference, steady, options, device),
            "faces_edited": summary.faces_edited,
            "faces_left_as_they_are": summary.faces_left,
            "frames_with_faces": sum(count > 0 for count in summary.faces_per_frame),
            "frames_detected": summary.detections,
            "frames_detected_around_lost_faces": summary.crop_detections,
            "stage_seconds": {stage: round(summary.stage_seconds[stage], 2) for stage in STAGES},
            "stage_frames_per_s": {stage: round(summary.frames / max(summary.stage_seconds[stage], 1e-9), 2)
                                   for stage in STAGES},
            **face_region_quality(clip, output, reference),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="generator file, run folder, or 'untrained' (default: bundled)")
    parser.add_argument("--image-size", type=int, default=128, help="for --model untrained")
    parser.add_argument("--clip", type=Path, default=DATA / "video" / "street_1080p_audio.mp4")
    parser.add_argument("--mjpeg", action="store_true", help="also bench a 720x480 MJPEG/AVI clip made from --clip")
    parser.add_argument("--crf", type=int, default=18)
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--chunk-size", type=int, default=VideoOptions.chunk_size)
    parser.add_argument("--max-side", type=int, default=DetectionOptions.max_side, help="detection resolution")
    parser.add_argument("--detect-every", type=int, default=VideoOptions.detect_every)
    parser.add_argument("--pairs", type=int, default=3, help="alternating transcode/exaug runs; the median is reported")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench_video_"))
    clips = [args.clip]
    if args.mjpeg:
        clips.append(make_mjpeg_clip(args.clip, workdir / f"{args.clip.stem}_720x480_mjpeg.avi"))
    reports = []
    for number, clip in enumerate(clips):
        folder = workdir / str(number)
        folder.mkdir()
        reports.append(bench_clip(clip, args, folder))
    print(json.dumps({"max_side": args.max_side, "detect_every": args.detect_every, "crf": args.crf,
                      "preset": args.preset, "clips": reports}, indent=2))


if __name__ == "__main__":
    main()
