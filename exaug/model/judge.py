"""``exaug eval``'s judges: expression classifiers, their input and their file.

Two kinds: the CK+ judge (ResNet-18 from scratch at the generator's size, all eight expressions,
:func:`exaug.train.judge.train_classifier`) and the FER2013 judge (a small CNN on 48 px greyscale,
seven expressions, no contempt, :mod:`exaug.train.fer2013`), which never saw the generator's people.
A judge always sees luma (replicated to three channels): a colour model cannot score by tinting a
face, and a greyscale dataset is judged the same way. Both are saved in the same weights-only format
as the generator (:mod:`exaug.model.checkpoint`); the file's metadata says which kind it is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from exaug.device import resolve_device
from exaug.expressions import EXPRESSIONS
from exaug.model.checkpoint import CLASSIFIER_FORMAT, load_weights, save_weights
from exaug.errors import ExaugError
from exaug.faces.align import apply_affine, estimate_similarity, get_template, invert_affine, resize_faces
from exaug.model.color import encode

FER_EXPRESSIONS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")  # FER2013: no contempt
FER_SIZE = 48


def _fer_cnn(classes: int) -> nn.Module:
    """VGG-style blocks (3x3 convolutions with batch norm, 2x2 max-pooling; one convolution at full
    resolution, where it costs most) and global pooling: 0.3 M parameters, about 20 s per FER2013
    epoch at 24 px on two CPU cores."""
    layers: list[nn.Module] = []
    width_in = 3
    for width, convolutions in ((24, 1), (48, 2), (96, 2), (192, 1)):
        for _ in range(convolutions):
            layers += [nn.Conv2d(width_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            width_in = width
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(width_in, classes))


def judge_network(arch: str = "resnet18", classes: int = len(EXPRESSIONS)) -> nn.Module:
    if arch == "resnet18":
        return torchvision.models.resnet18(weights=None, num_classes=classes)
    if arch == "fer-cnn":
        return _fer_cnn(classes)
    raise ExaugError(f"unknown judge architecture {arch!r}")


def judge_input(faces: Tensor, *, blur: float = 0.0, size: int | None = None, standardize: bool = False) -> Tensor:
    """uint8 RGB (N,3,S,S) -> luma in [-1, 1], replicated to three channels.

    The FER judge also takes ``blur`` (a Gaussian's sigma in pixels of these faces), ``size`` (an
    antialiased resize after it) and ``standardize`` (each face to zero mean, unit deviation): its
    training faces are much blurrier and flatter than every face it is asked about (see
    :func:`exaug.train.fer2013.matching_blur`), and a judge fed sharper faces than it learned on
    answers from the gap, not the expression.
    """
    x = encode(faces, 1)[0]
    if blur > 0:
        x = gaussian_blur(x, blur)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if standardize:
        x = (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True) + 0.02)
    return x.expand(-1, 3, -1, -1)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """(N,C,H,W) float blurred by a Gaussian of ``sigma`` pixels (separable, edges replicated)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device) ** 2) / (2 * sigma * sigma))
    taps = (taps / taps.sum()).repeat(x.shape[1], 1, 1)
    x = F.pad(x, (radius,) * 4, mode="replicate")
    x = F.conv2d(x, taps[:, :, None, :], groups=x.shape[1])
    return F.conv2d(x, taps[:, :, :, None], groups=x.shape[1])


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal flips and crops shifted by up to 1/16 of the side (edges replicated)."""
    count, _, size, _ = x.shape
    flip = (torch.rand(count, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, size // 16)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (count, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, top:top + size, left:left + size] for i, (top, left) in enumerate(offsets)])


@torch.inference_mode()
def expression_probabilities(network: nn.Module, faces: Tensor, *, batch_size: int = 128, **view: Any) -> Tensor:
    """Softmax probabilities (N, classes) on the CPU for uint8 RGB faces (N,3,S,S), N > 0; ``view``
    goes to :func:`judge_input`."""
    device = next(network.parameters()).device
    return torch.cat([network(judge_input(faces[i:i + batch_size].to(device), **view)).float().softmax(dim=1).cpu()
                      for i in range(0, len(faces), batch_size)])


def predict_expressions(network: nn.Module, faces: Tensor, *, batch_size: int = 128, **view: Any) -> Tensor:
    """Expression indices (N,) on the CPU for uint8 RGB faces (N,3,S,S); ``view`` goes to :func:`judge_input`."""
    if not len(faces):
        return torch.zeros(0, dtype=torch.long)
    return expression_probabilities(network, faces, batch_size=batch_size, **view).argmax(dim=1)


class Judge:
    """A loaded judge: its network and metadata, and the faces it is asked about put the way it was
    trained to see them (its size; for the FER judge, FER's framing of the face)."""

    def __init__(self, network: nn.Module, meta: dict[str, Any]):
        self.network, self.meta = network, meta
        self.expressions: tuple[str, ...] = tuple(meta.get("expressions") or EXPRESSIONS)
        self.image_size: int = int(meta["image_size"])
        self._to_exaug = torch.tensor([EXPRESSIONS.index(name) for name in self.expressions])
        self.view = {"blur": float(meta.get("blur", 0.0)), "size": meta.get("input_size"),
                     "standardize": bool(meta.get("standardize", False))}

    def framed(self, faces: Tensor, template: str | None = "exaug") -> Tensor:
        """uint8 faces aligned on ``template`` (any size) at the judge's size; moved into the judge's
        recorded five-point frame when it has one (a similarity, bilinear after an antialiased resize)."""
        frame = self.meta.get("frame")
        if not frame:
            return resize_faces(faces, self.image_size)
        if template is None:
            raise ExaugError("this judge places faces by their five landmarks: it needs faces aligned on a template, "
                             "not ready-made crops (--no-align)")
        size, out = 2 * self.image_size, self.image_size
        points = torch.from_numpy(get_template(template, size).points).float()
        to_source = invert_affine(estimate_similarity(points[None], torch.tensor(frame) * out - 0.5))
        ys, xs = torch.meshgrid(torch.arange(out).float(), torch.arange(out).float(), indexing="ij")
        source = apply_affine(to_source, torch.stack([xs, ys], -1).reshape(1, -1, 2))
        grid = ((source + 0.5) * 2 / size - 1).reshape(1, out, out, 2).expand(len(faces), -1, -1, -1)
        moved = F.grid_sample(resize_faces(faces, size).float(), grid.to(faces.device), mode="bilinear",
                              padding_mode="border", align_corners=False)
        return moved.round().clamp(0, 255).to(torch.uint8)

    def probabilities(self, faces: Tensor, *, framed: bool = True, template: str | None = "exaug",
                      batch_size: int = 256) -> Tensor:
        """(N, 8) probabilities in exaug's expression order, on the CPU, for uint8 RGB faces
        (N,3,S,S); an expression the judge does not know (FER: contempt) gets 0. ``framed=False`` for
        faces already in the judge's own framing (FER's test splits). Every face is seen through the
        judge's recorded view (blur, size, standardisation)."""
        device = next(self.network.parameters()).device
        out = torch.zeros(len(faces), len(EXPRESSIONS))
        for start in range(0, len(faces), batch_size):
            batch = faces[start:start + batch_size].to(device)
            batch = self.framed(batch, template) if framed else resize_faces(batch, self.image_size)
            out[start:start + len(batch), self._to_exaug] = expression_probabilities(
                self.network, batch, batch_size=batch_size, **self.view)
        return out

    def predict(self, faces: Tensor, **options: Any) -> Tensor:
        """exaug expression indices (N,) on the CPU: the most probable (:meth:`probabilities`)."""
        return self.probabilities(faces, **options).argmax(dim=1)

    def save(self, path: Path | str) -> Path:
        return save_classifier(path, self.network, self.meta)


class JudgePanel:
    """Judges trained alike (the same data, other seeds) voting with their mean probability. One
    FER judge is a noisy instrument: retrained on another machine from the same seed, it called 85%
    of the bundled model's held-out smiles happy where its predecessor called 96%, and 92% of the
    real ones where its predecessor called 100%."""

    def __init__(self, judges: list[Judge]):
        if not judges:
            raise ExaugError("a judge panel needs at least one judge")
        self.judges = judges
        self.meta = {**judges[0].meta, "panel": [judge.meta for judge in judges]}
        self.expressions = judges[0].expressions

    def probabilities(self, faces: Tensor, **options: Any) -> Tensor:
        return torch.stack([judge.probabilities(faces, **options) for judge in self.judges]).mean(0)

    def predict(self, faces: Tensor, **options: Any) -> Tensor:
        return self.probabilities(faces, **options).argmax(dim=1)


def load_judge(path: Path | str, device: str | torch.device = "auto") -> Judge:
    return Judge(*load_classifier(path, device))


def panel_of(judges: list[Judge]) -> Judge | JudgePanel:
    """One judge as it is; several as a :class:`JudgePanel`."""
    return judges[0] if len(judges) == 1 else JudgePanel(judges)


def load_judges(paths: list[Path], device: str | torch.device = "auto") -> Judge | JudgePanel:
    """Judge files, as :func:`panel_of` puts them."""
    return panel_of([load_judge(path, device) for path in paths])


def save_classifier(path: Path | str, network: nn.Module, meta: dict[str, Any]) -> Path:
    """Weights and metadata only (loads with ``weights_only=True``), written atomically."""
    return save_weights(Path(path), CLASSIFIER_FORMAT, meta, {"network": network})


def load_classifier(path: Path | str, device: str | torch.device = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """The network (eval mode, on ``device``) and its metadata; any way the file is wrong is one
    ExaugError. Files holding Python objects are refused, never unpickled."""
    modules, meta = load_weights(Path(path), CLASSIFIER_FORMAT, lambda meta: {"network": _network_for(meta)},
                                 damaged="damaged classifier file")
    return modules["network"].to(resolve_device(device)).eval(), meta


def _network_for(meta: dict[str, Any]) -> nn.Module:
    expressions = meta.get("expressions") or EXPRESSIONS
    if not isinstance(expressions, (list, tuple)) or set(expressions) - set(EXPRESSIONS):
        raise ExaugError(f"unknown expressions {expressions!r}")
    return judge_network(str(meta.get("arch", "resnet18")), len(expressions))
