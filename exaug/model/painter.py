"""The painter: what a warp cannot do (teeth, the mouth's inside, the folds beside it), under a mask.

The geometry-guided generator first moves the face's own pixels (:mod:`exaug.model.warp`), then
this small U-Net looks at the input face, the warped face, the motion field and the expression
codes (where the face is going, and where it is now) and predicts a colour layer ``C``, a mask
``A`` and a shading gain ``G``: ``out = A * G * warped + (1 - A) * C``. Trained to keep ``A`` near
one, it paints only where the warp is wrong, so identity and resolution come from the warp and only
a small area is invented. ``G`` is what a warp cannot do outside the mouth: the nasolabial folds and
raised cheeks of a smile, the shading under a dropped jaw. It is predicted at a quarter of the
window's resolution and scales the face's own pixels, so it adds shading without painting texture
(without it, a held-out CK+ smile at its real geometry was judged happy by the FER2013 judge a third
as often as the real smile: the judge looks at the folds, not only the mouth).

It sees only the lower middle of the aligned face (:attr:`PainterConfig.window`): everything an
expression's new texture needs lies there, eyes and brows are moved by the warp alone, and a
window of 3/8 of the face costs 3/8 of the convolutions, in training and at inference.

Upsampling is bilinear followed by a convolution, never a transposed convolution, whose uneven
overlap is what printed the old model's checkerboard dots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Rows 1/2..1 and columns 1/8..7/8 of exaug's aligned face: the mouth and its surroundings at every
# expression and intensity up to 1.5 (CK+'s widest smile and lowest jaw included), a multiple of 8
# pixels high and wide at 128 (64 x 96), so the U-Net's three halvings come out even.
MOUTH_WINDOW = (0.5, 0.125, 0.5, 0.75)  # top, left, height, width; fractions of the side


@dataclass(frozen=True)
class PainterConfig:
    image_size: int = 128
    channels: int = 1  # 1: luma (greyscale training data; colour faces keep their warped chroma), 3: RGB
    width: int = 16
    code_dim: int = 16  # size of one expression code (the geometry model's expression basis)
    window: tuple[float, float, float, float] = MOUTH_WINDOW
    shading: bool = True  # the gain layer G (files from before it load with False)

    def window_slices(self, size: int | None = None) -> tuple[slice, slice]:
        """Rows and columns of the window in a face ``size`` pixels wide (default: the model's)."""
        size = size or self.image_size
        top, left, height, width = (round(fraction * size) for fraction in self.window)
        return slice(top, top + height), slice(left, left + width)


def _conv(channels_in: int, channels_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, kernel_size=3, stride=stride, padding=1),
                         nn.GroupNorm(num_groups=8, num_channels=channels_out), nn.LeakyReLU(0.2))


class _Up(nn.Module):
    """Double the resolution, then fuse with the encoder's features at that resolution."""

    def __init__(self, channels_in: int, channels_skip: int, channels_out: int):
        super().__init__()
        self.fuse = nn.Sequential(_conv(channels_in + channels_skip, channels_out), _conv(channels_out, channels_out))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, skip], 1))


class PaintLayers(NamedTuple):
    """The painter's output over its window, (N, ., h, w) each."""

    colour: Tensor  # C in [-1, 1]
    keep: Tensor  # A: 1 keeps the (shaded) warp, 0 takes C
    shade: Tensor | None  # log G, zero at the window's edges; None for painters without shading


def window_taper(height: int, width: int, device: torch.device) -> Tensor:
    """(1, 1, h, w): from 0 on the window's border (1/16 at its outermost pixels' centres) up to 1 an
    eighth of its height in, so a shading gain leaves no seam where the window ends."""
    ramp = max(1.0, height / 8)
    rows = torch.arange(height, device=device, dtype=torch.float32)
    columns = torch.arange(width, device=device, dtype=torch.float32)
    to_row_edge = torch.minimum(rows + 0.5, height - 0.5 - rows)[:, None]
    to_column_edge = torch.minimum(columns + 0.5, width - 0.5 - columns)[None, :]
    return (torch.minimum(to_row_edge, to_column_edge) / ramp).clamp(0, 1)[None, None]


class Painter(nn.Module):
    """U-Net over the window: three halvings and back, codes joined at the bottom; colour, mask and
    (at a quarter resolution) shading heads."""

    def __init__(self, config: PainterConfig):
        super().__init__()
        c, w = config.channels, config.width
        self.config = config
        # down: input face, warped face, motion field (2 channels)
        self.down1 = nn.Sequential(_conv(2 * c + 2, w), _conv(w, w))
        self.down2 = _conv(w, 2 * w, stride=2)
        self.down3 = _conv(2 * w, 4 * w, stride=2)
        self.down4 = _conv(4 * w, 8 * w, stride=2)
        # bottleneck: the target motion code and the face's present expression code, tiled
        self.bottleneck = nn.Sequential(_conv(8 * w + 2 * config.code_dim, 8 * w), _conv(8 * w, 8 * w))
        # up
        self.up3 = _Up(8 * w, 4 * w, 4 * w)
        self.up2 = _Up(4 * w, 2 * w, 2 * w)
        self.up1 = _Up(2 * w, w, w)
        self.colour = nn.Conv2d(w, c, kernel_size=3, padding=1)
        self.mask = nn.Conv2d(w, 1, kernel_size=3, padding=1)
        nn.init.constant_(self.mask.bias, 3.0)  # start by trusting the warp everywhere (A ~ 0.95)
        self.shade = nn.Conv2d(4 * w, 1, kernel_size=3, padding=1) if config.shading else None
        if self.shade is not None:  # start with no shading (G = 1)
            nn.init.zeros_(self.shade.weight)
            nn.init.zeros_(self.shade.bias)

    def forward(self, face: Tensor, warped: Tensor, motion: Tensor, codes: Tensor,
                region: Tensor | None = None) -> PaintLayers:
        """The window's layers. ``face``, ``warped``: (N, C, h, w) in [-1, 1]; ``motion``: (N, 2, h, w)
        sampling offsets in fractions of the face's side; ``codes``: (N, 2 * code_dim); ``region``:
        (N, 1, h, w) in [0, 1], where painting (not shading) is allowed at all."""
        d1 = self.down1(torch.cat([face, warped, motion * 10], 1))
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        d4 = self.down4(d3)
        tiled = codes[:, :, None, None].expand(-1, -1, *d4.shape[-2:])
        u = self.bottleneck(torch.cat([d4, tiled], 1))
        quarter = self.up3(u, d3)
        u = self.up1(self.up2(quarter, d2), d1)
        keep = torch.sigmoid(self.mask(u))
        if region is not None:
            keep = 1 - region * (1 - keep)
        shade = None
        if self.shade is not None:  # log-gain within +-0.5 (x0.61..x1.65), smooth by construction
            shade = F.interpolate(0.5 * torch.tanh(self.shade(quarter)), size=u.shape[-2:], mode="bilinear",
                                  align_corners=False) * window_taper(*u.shape[-2:], u.device)
        return PaintLayers(torch.tanh(self.colour(u)), keep, shade)


class PatchCritic(nn.Module):
    """A small PatchGAN (real/fake per 16-pixel patch) that keeps painted regions from going soft."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 1, kernel_size=3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
