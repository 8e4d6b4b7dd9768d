"""Batched face detection with facenet-pytorch's MTCNN.

MTCNN only batches images of one size, and runs its image pyramid on whatever it is given, so a
folder of mixed phone photos is slow one image at a time and very slow at full resolution. Here
images are downscaled to at most ``max_side`` for detection, grouped by size, padded to a common
canvas and detected together (raise ``max_side`` to find faces smaller than ``min_face_size`` times the
downscale factor); boxes and landmarks are mapped back to the full-resolution original,
from which the aligner then crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN
from torch import nn

from exaug.device import resolve_device

FaceSelection = Literal["all", "largest"]
CANVAS_STEP = 128  # detection canvases are multiples of this: coarse enough to batch, fine enough to waste little


def _detection_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def _canvas_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    h, w = _detection_shape(shape, scale)
    return -(-h // CANVAS_STEP) * CANVAS_STEP, -(-w // CANVAS_STEP) * CANVAS_STEP


class ChannelsLastMaxPool(nn.Module):
    """MTCNN's max-pooling (``ceil_mode``, no padding), the same numbers as ``nn.MaxPool2d``, faster
    on large channels-last tensors: torch's CPU kernel for that layout also computes the indices it
    throws away (the R-net's first pooling over 336 candidate boxes: 6.5 ms, here 2.6; a 720x480
    frame's whole pass 79 -> 73 ms on one thread). Rows, then columns, as strided slices combined
    with ``maximum``; small tensors, where that costs more calls than it saves, keep torch's kernel."""

    SMALL = 65536  # elements

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() != 4 or x.numel() < self.SMALL or min(x.shape[2:]) < self.kernel
                or not x.is_contiguous(memory_format=torch.channels_last)):
            return F.max_pool2d(x, self.kernel, self.stride, ceil_mode=True)
        pixels = x.permute(0, 2, 3, 1)  # (n, H, W, C), contiguous
        return self._along(self._along(pixels, 1), 2).permute(0, 3, 1, 2)

    def _along(self, pixels: torch.Tensor, dim: int) -> torch.Tensor:
        """Pool one spatial axis: output i is the maximum of inputs i*stride .. i*stride+kernel-1,
        the window's part past the end left out (ceil mode: the last window may hang over)."""
        size, step = pixels.shape[dim], self.stride
        count = -(-(size - self.kernel) // step) + 1
        if (count - 1) * step >= size:  # a window must start inside the input
            count -= 1
        every = (slice(None),) * dim + (slice(None, None, step),)
        pooled = pixels.narrow(dim, 0, (count - 1) * step + 1)[every].clone()
        for offset in range(1, self.kernel):
            reach = min(count, -(-(size - offset) // step))  # windows whose offset-th input exists
            if reach > 0:
                target = pooled.narrow(dim, 0, reach)
                torch.maximum(target, pixels.narrow(dim, offset, (reach - 1) * step + 1)[every], out=target)
        return pooled


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


@dataclass(frozen=True)
class DetectionOptions:
    """Which faces count; one set of options so align, augment and video find the same faces."""

    faces: FaceSelection = "all"
    min_face_size: int = 20  # pixels of the original image (see max_side)
    threshold: float = 0.9
    max_side: int = 1024

    def detector(self, device: str | torch.device, batch_size: int) -> "FaceDetector":
        return FaceDetector(device, min_face_size=self.min_face_size, threshold=self.threshold, faces=self.faces,
                            max_side=self.max_side, batch_size=batch_size)


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
        # The size limit applies in detection pixels, the same for every image, so an image's faces do
        # not depend on which images share its batch (resumed and sharded runs equal a single run).
        # In an image downscaled by s for detection, the smallest face found is min_face_size / s.
        self._mtcnn = MTCNN(keep_all=True, device=self.device, min_face_size=max(12, min_face_size), post_process=False)
        # Channels-last networks: the P-net's max-pooling and convolutions run in that layout
        # whatever the input's: a 720x480 frame's pass takes 92 instead of 129 ms on a 2-core CPU,
        # boxes within 1e-4 px.
        for network in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
            network.to(memory_format=torch.channels_last)
            for name, layer in list(network.named_children()):
                if isinstance(layer, nn.MaxPool2d):
                    setattr(network, name, ChannelsLastMaxPool(layer.kernel_size, layer.stride))

    def detect(self, images: Sequence[np.ndarray | torch.Tensor]) -> list[ImageFaces]:
        """Faces of each ``HxWx3 uint8`` RGB image (numpy, or a tensor already on the device), in order."""
        results: list[ImageFaces] = [ImageFaces.empty() for _ in images]
        scales = [min(1.0, self.max_side / max(image.shape[:2])) for image in images]
        for group in self._size_groups(images, scales):
            for index, found in zip(group, self._detect_group([images[i] for i in group], [scales[i] for i in group])):
                results[index] = found
        return results

    def _size_groups(self, images: Sequence[np.ndarray | torch.Tensor], scales: list[float]) -> list[list[int]]:
        """Batches of images that share a padded canvas size.

        The canvas is the image's own detection size rounded up to a multiple of ``CANVAS_STEP``, so
        it never depends on the other images: an image's faces are the same in any batch (resumed,
        sharded and single runs agree), while photos from one camera still batch together.
        """
        groups: dict[tuple[int, int], list[int]] = {}
        for index, (image, scale) in enumerate(zip(images, scales)):
            groups.setdefault(_canvas_shape(image.shape[:2], scale), []).append(index)
        return [members[start:start + self.batch_size] for _, members in sorted(groups.items())
                for start in range(0, len(members), self.batch_size)]

    def _detect_group(self, images: list[np.ndarray | torch.Tensor], scales: list[float]) -> list[ImageFaces]:
        sizes = [_detection_shape(image.shape[:2], scale) for image, scale in zip(images, scales)]
        height, width = _canvas_shape(images[0].shape[:2], scales[0])
        if min(height, width) < self._mtcnn.min_face_size:  # no face that large fits (MTCNN fails on it)
            return [ImageFaces.empty() for _ in images]
        # Stored planar, handed over as (n, H, W, 3): MTCNN permutes it back to planar, where the
        # image pyramid's area resizing is a quarter faster than from interleaved pixels.
        canvas = torch.zeros((len(images), 3, height, width), device=self.device).permute(0, 2, 3, 1)
        for slot, (image, (h, w)) in enumerate(zip(images, sizes)):
            pixels = torch.as_tensor(image).to(self.device, non_blocking=True)
            if (h, w) != tuple(image.shape[:2]):
                resized = F.interpolate(pixels.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear",
                                        antialias=True, align_corners=False)
                pixels = resized[0].permute(1, 2, 0).clamp_(0, 255)
            canvas[slot, :h, :w] = pixels
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
