"""The networks: StarGAN's generator and discriminator, and the small classifier shipped beside G.

The generator sees the face and the target expression as a one-hot label tiled over the image; the
discriminator is a PatchGAN (a real/fake score per patch) with an auxiliary expression classifier
(Choi et al., StarGAN, CVPR 2018). Two departures from the paper, both for keeping identity:

* an optional attention mask (Pumarola et al., GANimation, ECCV 2018): G also predicts a mask A and
  outputs ``A * x + (1 - A) * C``, so pixels the expression does not touch (hair, background,
  glasses) are copied from the input instead of being redrawn. It is on by default because keeping
  identity is exaug's whole point and it costs one 7x7 convolution.
* instance norm without running statistics, so a face is rendered the same whether it is alone or
  in a batch of 64, in training and at inference.

Sizes, widths, depth and channels are :class:`ModelConfig`, stored in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from exaug.expressions import EXPRESSIONS

IMAGE_SIZES = (32, 64, 128, 256, 512)  # D halves a face down to 2x2 patches: powers of two, 32 to 512


class ModelOptionError(ValueError):
    """A model option out of range, naming its field, so ``exaug train`` can name it as the option
    the user typed and a checkpoint's check as the metadata field it read."""

    def __init__(self, field: str, value: object, expected: str):
        super().__init__(f"{field} must be {expected}, not {value}")
        self.field, self.value, self.expected = field, value, expected


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild G and D; StarGAN's 128px defaults.

    ``channels`` is 3 for an RGB model and 1 for a luma model (trained on greyscale data; at
    inference it edits the Y channel of colour faces and keeps their chroma). ``conv_dim`` is the
    width of G's first layer and of D's first layer, as in StarGAN.
    """

    image_size: int = 128
    channels: int = 3
    conv_dim: int = 64
    repeat_num: int = 6
    attention: bool = True
    num_expressions: int = len(EXPRESSIONS)

    def __post_init__(self) -> None:
        if self.image_size not in IMAGE_SIZES:
            raise ModelOptionError("image_size", self.image_size, f"one of {image_sizes()}")
        if self.channels not in (1, 3):
            raise ModelOptionError("channels", self.channels, "1 (luma) or 3 (RGB)")
        if self.conv_dim < 1:
            raise ModelOptionError("conv_dim", self.conv_dim, "at least 1")
        if self.repeat_num < 0:
            raise ModelOptionError("repeat_num", self.repeat_num, "0 or more")

    @property
    def d_repeat_num(self) -> int:
        """D's stride-2 layers: down to 2x2 patches, at most StarGAN's six (4x4 patches at 256px)."""
        return min(6, self.image_size.bit_length() - 2)


def image_sizes() -> str:
    """The face sizes a model can have, as help and errors list them: "32, 64, 128, 256 or 512"."""
    return f"{', '.join(map(str, IMAGE_SIZES[:-1]))} or {IMAGE_SIZES[-1]}"


def _normalized(conv: nn.Module, channels: int) -> list[nn.Module]:
    """A generator layer: ``conv``, instance norm with a learnt scale and shift, ReLU."""
    return [conv, nn.InstanceNorm2d(channels, affine=True), nn.ReLU(inplace=True)]


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions at constant width, added to the input."""

    def __init__(self, dim: int):
        super().__init__()
        self.main = nn.Sequential(
            *_normalized(nn.Conv2d(in_channels=dim, out_channels=dim, kernel_size=3, stride=1, padding=1, bias=False),
                         dim),
            nn.Conv2d(in_channels=dim, out_channels=dim, kernel_size=3, stride=1, padding=1, bias=False),
            nn.InstanceNorm2d(dim, affine=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.main(x)


class Generator(nn.Module):
    """StarGAN's generator: down-sampling, a residual bottleneck, up-sampling, then the output heads."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.conv_dim

        # Down-sampling: a 7x7 convolution over the face and its tiled label, then two stride-2
        # convolutions, each halving the size and doubling the width.
        down = _normalized(nn.Conv2d(in_channels=config.channels + config.num_expressions, out_channels=dim,
                                     kernel_size=7, stride=1, padding=3, bias=False), dim)
        for _ in range(2):
            down += _normalized(nn.Conv2d(in_channels=dim, out_channels=dim * 2, kernel_size=4, stride=2, padding=1,
                                          bias=False), dim * 2)
            dim *= 2

        # Bottleneck: residual blocks at a quarter of the size.
        bottleneck = [ResidualBlock(dim) for _ in range(config.repeat_num)]

        # Up-sampling: two transposed convolutions back to full size and the first layer's width.
        up: list[nn.Module] = []
        for _ in range(2):
            up += _normalized(nn.ConvTranspose2d(in_channels=dim, out_channels=dim // 2, kernel_size=4, stride=2,
                                                 padding=1, bias=False), dim // 2)
            dim //= 2

        # One Sequential, as the checkpoints name its parameters (body.0.weight, ...).
        self.body = nn.Sequential(*down, *bottleneck, *up)

        # Output heads: the colour image C in [-1, 1] and, with attention, the mask A in [0, 1].
        self.color = nn.Sequential(
            nn.Conv2d(in_channels=dim, out_channels=config.channels, kernel_size=7, stride=1, padding=3, bias=False),
            nn.Tanh())
        self.attention = (nn.Sequential(
            nn.Conv2d(in_channels=dim, out_channels=1, kernel_size=7, stride=1, padding=3, bias=False),
            nn.Sigmoid()) if config.attention else None)

    def forward(self, x: Tensor, label: Tensor) -> tuple[Tensor, Tensor | None]:
        """``x`` in [-1, 1], ``label`` (N, 8) (one-hot, or a blend for partial intensity).

        Returns the edited face and the attention mask (1 = keep the input pixel), or None without one.
        """
        tiled = label.to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        features = self.body(torch.cat([x, tiled], dim=1))
        color = self.color(features)
        if self.attention is None:
            return color, None
        mask = self.attention(features)
        return mask * x + (1 - mask) * color, mask


class Discriminator(nn.Module):
    """PatchGAN critic with an auxiliary expression classifier sharing its features."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.conv_dim

        # Down-sampling: stride-2 4x4 convolutions, each halving the size and doubling the width,
        # down to patches of 2x2 to 4x4 (no normalisation, as WGAN-GP's gradient penalty wants).
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels=config.channels, out_channels=dim, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.01)]
        for _ in range(1, config.d_repeat_num):
            layers += [nn.Conv2d(in_channels=dim, out_channels=dim * 2, kernel_size=4, stride=2, padding=1),
                       nn.LeakyReLU(0.01)]
            dim *= 2
        self.main = nn.Sequential(*layers)

        # Heads: a realness score per patch, and expression logits from a convolution over all patches.
        self.src = nn.Conv2d(in_channels=dim, out_channels=1, kernel_size=3, stride=1, padding=1, bias=False)
        self.cls = nn.Conv2d(in_channels=dim, out_channels=config.num_expressions,
                             kernel_size=config.image_size >> config.d_repeat_num, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-patch realness scores (N, 1, P, P) and expression logits (N, 8)."""
        features = self.main(x)
        return self.src(features), self.cls(features).flatten(1)


class ExpressionClassifier(nn.Module):
    """The source estimator: which expression does a real face show?

    Partial intensity blends the target label with the source expression, which a caller often
    does not know. D's classifier head knows it, but D is several times G's size, so a separate
    classifier of about 0.2M parameters is trained on the same real faces and shipped with G.
    """

    def __init__(self, config: ModelConfig, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        previous = config.channels
        for width in widths:
            layers += [nn.Conv2d(in_channels=previous, out_channels=width, kernel_size=4, stride=2, padding=1),
                       nn.LeakyReLU(0.2, inplace=True)]
            previous = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(previous, config.num_expressions)

    def forward(self, x: Tensor) -> Tensor:
        """Expression logits (N, 8) for faces in [-1, 1]."""
        return self.head(self.features(x))
