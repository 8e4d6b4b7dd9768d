"""The painter: what a warp cannot do (teeth, the mouth's inside, the face's folds and shadows).

The geometry-guided generator first moves the face's own pixels (:mod:`exaug.model.warp`). Then two
small networks look at the input face, the warped face, the motion field and the expression codes
(where the face is going, and where it is now):

* :class:`Shader`, over the whole face at a quarter of its resolution, predicts a gain on the
  warped face's light: the forehead's lines and the lifted brows of surprise, the cheeks of a smile,
  the furrows of anger. It scales the face's own pixels, so it adds shading without painting texture.
* :class:`Painter`, a U-Net over the lower middle of the face only (:attr:`PainterConfig.window`),
  predicts a colour layer ``C``, a mask ``A`` and a gain ``G`` of its own:
  ``out = A * G * shaded + (1 - A) * C``. Trained to keep ``A`` near one, it paints only where the
  warp is wrong (teeth, the mouth's inside), so identity and resolution come from the warp and only
  a small area is invented. ``G`` (at a quarter of the window's resolution) is the folds beside a
  smile and the shading under a dropped jaw, learnt end to end with the paint (without it, a held-out
  CK+ smile at its real geometry was judged happy by the FER2013 judge a third as often as the real
  smile: the judge looks at the folds, not only the mouth). Everything new texture needs lies in the
  window, and a window of 3/8 of the face costs 3/8 of the convolutions.

Upsampling is bilinear followed by a convolution, never a transposed convolution, whose uneven
overlap is what printed the old model's checkerboard dots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exaug.model.warp import FIELD_SIZE

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
    shading: bool = True  # the painter's own gain over its window (files from before it load with False)
    face_shading: bool = True  # the face-wide gain (:class:`Shader`; files from before it load with False)

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
        # The face-wide gain lives here so one state dict (and one file entry) holds every learnt layer.
        self.face_shade = Shader(config) if config.face_shading else None

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


# The face-wide gain's resolution: the spline's own grid, so the motion field comes in as it is; a
# quarter of the model's 128 px.
SHADE_SIZE = FIELD_SIZE


class Shader(nn.Module):
    """The face's shading for the target expression, as a log-gain at :data:`SHADE_SIZE` over the whole
    face: the forehead's lines and the lifted brows' shadows of surprise, the folds and raised cheeks
    of a smile, the furrows of anger. The warp moves the face's own pixels; this darkens and lifts
    them. It never paints texture, so at a quarter of the resolution it cannot blur or dot a face;
    at 32 px it costs about 30 MFLOP a face, an eighth of the painter's arithmetic.

    Why the whole face: CK+'s mean ratio image (peak / warped neutral), blurred to 16 px and laid on
    the previous model's faces, raised the FER2013 judge's held-out surprise from 72% to 81% and its
    happy from 96% to 100%; above the mouth window alone, surprise went to 81% too."""

    def __init__(self, config: PainterConfig):
        super().__init__()
        c, w = config.channels, config.width
        self.down1 = nn.Sequential(_conv(2 * c + 2, w), _conv(w, w))
        self.down2 = _conv(w, 2 * w, stride=2)
        self.down3 = _conv(2 * w, 4 * w, stride=2)
        self.bottleneck = nn.Sequential(_conv(4 * w + 2 * config.code_dim, 4 * w), _conv(4 * w, 4 * w))
        self.up2 = _Up(4 * w, 2 * w, 2 * w)
        self.up1 = _Up(2 * w, w, w)
        self.shade = nn.Conv2d(w, 1, kernel_size=3, padding=1)
        nn.init.zeros_(self.shade.weight)  # start with no shading (G = 1)
        nn.init.zeros_(self.shade.bias)

    def forward(self, face: Tensor, warped: Tensor, motion: Tensor, codes: Tensor, inside: Tensor) -> Tensor:
        """log G (N, 1, 32, 32), within +-0.5 (x0.61..x1.65) and zero outside the face. ``face``,
        ``warped``: (N, C, 32, 32) in [-1, 1]; ``motion``: (N, 2, 32, 32) as :meth:`Painter.forward`'s;
        ``inside``: (N, 1, 32, 32) in [0, 1], the target face's outline (hair and background keep
        their light)."""
        d1 = self.down1(torch.cat([face, warped, motion * 10], 1))
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        tiled = codes[:, :, None, None].expand(-1, -1, *d3.shape[-2:])
        u = self.up1(self.up2(self.bottleneck(torch.cat([d3, tiled], 1)), d2), d1)
        return 0.5 * torch.tanh(self.shade(u)) * inside


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
