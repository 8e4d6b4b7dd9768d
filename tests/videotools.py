"""Videos in tests: clips made from the real photos, decoded frames, picture quality, audio packets as stored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from exaug.io.video import read_frames


def all_frames(path: Path) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(read_frames(path, chunk_size=5))
    return np.concatenate([c.frames for c in chunks]), np.concatenate([c.pts for c in chunks])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.subtract(a, b, dtype=np.int16).ravel()
    mse = np.einsum("i,i->", diff, diff, dtype=np.float64) / diff.size
    return float(10 * np.log10(255 ** 2 / mse)) if mse else float("inf")


def audio_packets(path: Path) -> list[tuple[bytes, float]]:
    with av.open(str(path)) as container:
        return [(bytes(p), float(p.pts * p.time_base)) for p in container.demux(audio=0) if p.size]


@dataclass(frozen=True)
class Shot:
    """``frames`` frames of a photo seen through a window that pans from ``first`` to ``last``
    (left, top, width as fractions of the photo's width, height, width; the window has the clip's
    aspect ratio), like a camera moving over a still scene."""

    photo: Path
    frames: int
    first: tuple[float, float, float]
    last: tuple[float, float, float] | None = None


def photo_clip(path: Path, shots: list[Shot], size: tuple[int, int] = (320, 240), fps: int = 25) -> Path:
    """An H.264 clip (nearly lossless, no audio) of ``shots`` played one after another, hard cuts between."""
    width, height = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "10", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for shot in shots:
            photo = Image.open(shot.photo).convert("RGB")
            last = shot.last or shot.first
            for step in range(shot.frames):
                t = step / max(shot.frames - 1, 1)
                left, top, across = (a + (b - a) * t for a, b in zip(shot.first, last))
                x0, y0, side = left * photo.width, top * photo.height, across * photo.width
                box = (x0, y0, x0 + side, y0 + side * height / width)
                image = photo.resize(size, Image.Resampling.BICUBIC, box=box, reducing_gap=2.0)
                container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode(None))
    return path


def face_sharpness(output: np.ndarray, reference: np.ndarray, boxes: np.ndarray) -> float:
    """Laplacian energy (detail, what blurring removes) of ``output`` over ``reference``, (N, H, W, 3)
    uint8 frames, inside each frame's (x0, y0, x1, y1) box (``boxes``: (N, 4)): 1.0 keeps every detail."""
    from conftest import detail

    def energy(frames: np.ndarray) -> float:
        return detail(torch.from_numpy(frames).permute(0, 3, 1, 2), boxes).double().sum().item()
    return energy(output) / energy(reference)
