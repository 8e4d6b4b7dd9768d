"""Paste edited faces back into their frames without a visible seam.

The generator edits the whole aligned square, but only the face should change: a soft elliptical
mask, defined once in aligned space, is warped back with each face by the same inverse transform,
so the blend follows the face's roll and scale and fades out before the square's edges.
"""

from __future__ import annotations

import torch

from exaug.faces.align import unwarp_faces


def feather_mask(size: int, device: torch.device | str = "cpu", *, feather: float = 0.3) -> torch.Tensor:
    """``(1, S, S)`` float mask: 1 over the inner face, a smooth falloff ``feather`` wide, 0 at the edges.

    The ellipse is centred slightly below the middle, between the template's eyes and mouth, and
    reaches from brow to chin; ``feather`` is the falloff width as a fraction of the radius.
    """
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    radius = torch.sqrt(((xs - 0.5) / 0.44) ** 2 + ((ys - 0.52) / 0.47) ** 2)  # inside the square
    ramp = ((1.0 - radius) / feather).clamp(0, 1)
    return (ramp * ramp * (3 - 2 * ramp))[None]  # smoothstep: no visible edge in the first derivative


def paste_faces(frame: torch.Tensor, faces: torch.Tensor, transforms: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Blend ``(n, 3, S, S)`` faces into an ``(H, W, 3)`` uint8 frame, in place; returns the frame.
    Only each face's footprint is converted to float and back: a whole 1080p frame in float costs
    more than the faces pasted into it. Bicubic: a bilinear paste of a face at its own size takes a
    third of its fine detail (Laplacian energy) away."""
    if faces.shape[0] == 0:
        return frame
    stacked = torch.cat([faces.float() * mask, mask.expand(faces.shape[0], 1, -1, -1)], 1)
    for patch in unwarp_faces(stacked, transforms, frame.shape[:2], "bicubic"):
        _, height, width = patch.pixels.shape
        region = frame[patch.top:patch.top + height, patch.left:patch.left + width]
        alpha = patch.pixels[3:4].clamp(0, 1)
        # the warped colour is premultiplied by the mask, so edges do not pick up the black outside
        blended = region.permute(2, 0, 1).float().mul_(1 - alpha).add_(patch.pixels[:3])
        region.copy_(blended.round_().clamp_(0, 255).permute(1, 2, 0))
    return frame
