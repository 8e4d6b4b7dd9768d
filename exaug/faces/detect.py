"""Batched face detection with facenet-pytorch's MTCNN.

MTCNN only batches images of one size, and runs its image pyramid on whatever it is given, so a
folder of mixed phone photos is slow one image at a time and very slow at full resolution. Here
images are downscaled to at most ``max_side`` for detection, grouped by size, padded to a common
canvas and detected together; boxes and landmarks are mapped back to the full-resolution original,
from which the aligner then crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN

from exaug.device import resolve_device

FaceSelection = Literal["all", "largest"]


@dataclass
class ImageFaces:
    """The faces of one image, most probable first, in the original image's pixel coordinates."""

    boxes: np.ndarray  # (n, 4) float32: x0, y0, x1, y1
    probs: np.ndarray  # (n,) float32
    landmarks: np.ndarray  # (n, 5, 2) float32: eyes, nose, mouth corners (image left to right)

    def __len__(self) -> int:
        return len(self.probs)

    @classmethod
    def empty(cls) -> "ImageFaces":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))


class FaceDetector:
    """One MTCNN, created once, reused for every batch of images on CPU or CUDA."""

    def __init__(
        self,
        device: str | torch.device = "auto",
        *,
        min_face_size: int = 20,
        threshold: float = 0.9,
        faces: FaceSelection = "all",
        max_side: int = 1024,
        batch_size: int = 8,
    ):
        if faces not in ("all", "largest"):
            raise ValueError(f"faces must be 'all' or 'largest', not {faces!r}")
        self.device = resolve_device(device)
        self.min_face_size = min_face_size
        self.threshold = threshold
        self.faces = faces
        self.max_side = max_side
        self.batch_size = batch_size
        self._mtcnn = MTCNN(keep_all=True, device=self.device, min_face_size=min_face_size, post_process=False)

    def detect(self, images: Sequence[np.ndarray | torch.Tensor]) -> list[ImageFaces]:
        """Faces of each ``HxWx3 uint8`` RGB image (numpy, or a tensor already on the device), in order."""
        results: list[ImageFaces] = [ImageFaces.empty() for _ in images]
        scales = [min(1.0, self.max_side / max(image.shape[:2])) for image in images]
        for group in self._size_groups(images, scales):
            for index, found in zip(group, self._detect_group([images[i] for i in group], [scales[i] for i in group])):
                results[index] = found
        return results

    def _size_groups(self, images: Sequence[np.ndarray | torch.Tensor], scales: list[float]) -> list[list[int]]:
        """Batches of images whose detection sizes are close, so padding to one canvas wastes little."""
        def detection_shape(i: int) -> tuple[int, int]:
            h, w = images[i].shape[:2]
            return round(h * scales[i]), round(w * scales[i])

        order = sorted(range(len(images)), key=lambda i: (detection_shape(i)[0] > detection_shape(i)[1], detection_shape(i)))
        return [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def _detect_group(self, images: list[np.ndarray | torch.Tensor], scales: list[float]) -> list[ImageFaces]:
        sizes = [(max(1, round(im.shape[0] * s)), max(1, round(im.shape[1] * s))) for im, s in zip(images, scales)]
        canvas = torch.zeros((len(images), max(h for h, _ in sizes), max(w for _, w in sizes), 3), device=self.device)
        for slot, (image, (h, w)) in enumerate(zip(images, sizes)):
            pixels = torch.as_tensor(image).to(self.device, non_blocking=True)
            if (h, w) != image.shape[:2]:
                resized = F.interpolate(pixels.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear",
                                        antialias=True, align_corners=False)
                pixels = resized[0].permute(1, 2, 0).clamp_(0, 255)
            canvas[slot, :h, :w] = pixels
        # MTCNN's own size limit applies to the downscaled canvas; the real limit is checked afterwards.
        self._mtcnn.min_face_size = max(12, math.floor(self.min_face_size * min(scales)))
        boxes, probs, points = self._mtcnn.detect(canvas, landmarks=True)
        return [self._select(b, p, pts, s) for b, p, pts, s in zip(boxes, probs, points, scales)]

    def _select(self, boxes, probs, points, scale: float) -> ImageFaces:
        if boxes is None:
            return ImageFaces.empty()
        boxes = np.asarray(boxes, np.float32) / scale
        probs = np.asarray(probs, np.float32)
        points = np.asarray(points, np.float32).reshape(-1, 5, 2) / scale
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = (probs >= self.threshold) & (sides >= self.min_face_size)
        boxes, probs, points = boxes[keep], probs[keep], points[keep]
        order = np.argsort(-probs, kind="stable")
        if self.faces == "largest" and len(order):
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            order = np.array([int(np.argmax(areas))])
        return ImageFaces(boxes[order], probs[order], points[order])
