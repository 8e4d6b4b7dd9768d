"""Measuring videos in tests: decoded frames, picture quality, and the audio packets as stored."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

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
