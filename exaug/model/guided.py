"""The geometry-guided generator: move the face's own pixels, paint only what motion cannot.

For each aligned face: its mesh (:mod:`exaug.faces.mesh`) -> where the points go for the target
expression (:mod:`exaug.model.geometry`, a label or another face's expression) -> a dense warp
(:mod:`exaug.model.warp`) -> the shader's gain on the face's light, and the painter
(:mod:`exaug.model.painter`) filling in what the warp cannot (teeth, the inside of the mouth) under
a mask. Identity and resolution come from the warp, so
on a CPU-sized network the face stays the same person at full sharpness.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exaug.device import bf16_pays_on
from exaug.errors import ExaugError
from exaug.faces.align import (apply_affine, crop_grid, estimate_similarity, get_template, invert_affine, resize_faces,
                               warp_faces)
from exaug.faces.mesh import INPUT_SIZE, FaceMesh, crop_template, mouth_opening, to_source
from exaug.model.color import decode, encode
from exaug.model.geometry import STABLE_POINTS, ExpressionGeometry
from exaug.model.painter import SHADE_SIZE, Painter, PainterConfig, PaintLayers
from exaug.model.regions import (face_outline, facing, lip_colour, lips_box, paint_gate, paint_region,
                                 squeezed_teeth, stretched_lips)
from exaug.model.warp import identity_field, mesh_field, warp

TEMPLATE = "exaug"
MOUTH_INSIDE = 0.3  # the share of the lips' colour the inside of a gaping mouth takes


class Rendered(NamedTuple):
    """What :meth:`GuidedGenerator.render_layers` made, every layer kept for training's losses."""

    output: Tensor  # (N, C, S, S) in [-1, 1]
    keep: Tensor  # mask A over the whole face
    warped: Tensor  # the faces moved, before any gain
    log_gain: Tensor | None  # the shader's (N, 1, 32, 32); None for models without it
    paint: PaintLayers  # the painter's layers over its window
    outline: Tensor  # (N, 1, 32, 32) where the gain may act (:meth:`GuidedGenerator.shade_outline`)


class GuidedGenerator(nn.Module):
    """Geometry model + painter; meshes in, faces out (all in the aligned crop's pixels)."""

    def __init__(self, config: PainterConfig, geometry: ExpressionGeometry):
        super().__init__()
        self.config = config
        self.geometry = geometry
        self.painter = Painter(config)

    def codes(self, source_mesh: Tensor, target_mesh: Tensor) -> Tensor:
        """The painter's condition: the motion source -> target and the source's present expression,
        both in the geometry model's expression basis (continuous: a label or another face's look)."""
        frame = estimate_similarity(source_mesh.double()[:, list(STABLE_POINTS)], self.geometry.reference,
                                    dtype=torch.float64)
        motion = (apply_affine(frame, target_mesh.double()) - apply_affine(frame, source_mesh.double()))
        motion_code = motion.flatten(1) @ self.geometry.expression_basis.T
        present = self.geometry.explain(source_mesh.double())[1]
        return torch.cat([motion_code, present], 1).float()

    def field(self, source_mesh: Tensor, target_mesh: Tensor) -> Tensor:
        """Backward sampling field (N, FIELD_SIZE, FIELD_SIZE, 2) in fractions of the crop side."""
        return mesh_field(source_mesh, target_mesh, self.config.image_size)

    def shade(self, faces: Tensor, warped: Tensor, field: Tensor, codes: Tensor, outline: Tensor) -> Tensor | None:
        """The face-wide log-gain (N, 1, 32, 32) for ``faces`` and their ``warped`` faces (model channels,
        in [-1, 1], any size: both are averaged down to 32 px), acting inside the target face's
        ``outline`` (:meth:`shade_outline`), or None for models without it."""
        if self.painter.face_shade is None:
            return None
        motion = (field - identity_field(len(field), SHADE_SIZE, field.device)).permute(0, 3, 1, 2)
        small = lambda x: F.adaptive_avg_pool2d(x, SHADE_SIZE)  # noqa: E731
        return self.painter.face_shade(small(faces), small(warped), motion, codes, outline)

    def shade_outline(self, target_mesh: Tensor) -> Tensor:
        """(N, 1, 32, 32): where the face-wide gain may act, the target face's outline (:func:`face_outline`)."""
        scale = SHADE_SIZE / self.config.image_size  # pixel i's centre sits at i in both crops
        return face_outline((target_mesh[..., :2].float() + 0.5) * scale - 0.5, SHADE_SIZE)

    def layers(self, faces: Tensor, shaded: Tensor, field: Tensor, codes: Tensor, target_mesh: Tensor,
               outline: Tensor, gate: Tensor | None = None, bf16: bool = False) -> PaintLayers:
        """The painter's layers over its window for ``faces`` (N, C, S, S at the model's size, in
        [-1, 1]), given the same faces warped through ``field`` and shaded (``shaded``). It paints
        only around ``target_mesh``'s mouth (:func:`paint_region`), and neither paints nor shades
        outside the target face's ``outline`` (:meth:`shade_outline`, as the shader had it): on a
        face turned three-quarters the window reaches past
        the far jaw, and there it lit the hair and painted skin over it (a pale patch beside the
        mouth). ``gate`` (N,) scales the paint and the painter's gain alike (:func:`paint_gate`).
        Training leaves it out: the painter learns from every pair, closed mouths included (trained
        behind the gate, the recipe of the time, shading loss 0.2, came out worse on held-out CK+:
        happy judged 85% instead of 92%, sharpness 0.864 instead of 0.889). ``bf16`` runs the painter
        under bf16 autocast (:func:`~exaug.device.bf16_pays_on`); its layers come back in fp32."""
        rows, columns = self.config.window_slices(faces.shape[-1])
        inside = F.interpolate(outline, size=faces.shape[-2:], mode="bilinear",
                               align_corners=False)
        region = paint_region(target_mesh, faces.shape[-1]) * inside
        grid = F.interpolate(field.permute(0, 3, 1, 2), size=faces.shape[-2:], mode="bilinear", align_corners=False)
        motion = (grid - identity_field(len(faces), faces.shape[-1], faces.device).permute(0, 3, 1, 2))[..., rows, columns]
        gate = 1.0 if gate is None else gate.to(faces.device, faces.dtype)[:, None, None, None]
        with torch.autocast(faces.device.type, dtype=torch.bfloat16, enabled=bf16):
            paint = self.painter(faces[..., rows, columns], shaded[..., rows, columns], motion, codes,
                                 region[..., rows, columns] * gate)
        if bf16:
            paint = PaintLayers(*(None if layer is None else layer.float() for layer in paint))
        if paint.shade is not None:
            paint = paint._replace(shade=paint.shade * gate * inside[..., rows, columns])
        return paint

    def compose(self, warped: Tensor, paint: PaintLayers) -> tuple[Tensor, Tensor]:
        """Blend the window's layers into ``warped`` faces of any size: (output, mask A over the whole
        face). Larger faces get the layers upsampled: only the painted pixels are at the model's
        resolution, every moved (and shaded) pixel keeps the face's own detail."""
        size = warped.shape[-1]
        keep, colour = self.whole_face(paint.keep, 1.0, size), self.whole_face(paint.colour, 0.0, size)
        if paint.shade is not None:  # exactly 0 outside the window: no gain there
            warped = with_gain(warped, self.whole_face(paint.shade, 0.0, size))
        return keep * warped + (1 - keep) * colour, keep

    def whole_face(self, layer: Tensor, fill: float, size: int) -> Tensor:
        """A layer over the painter's window (N, C, h, w at the model's size) on a ``size``-pixel face,
        ``fill`` outside the window."""
        model_size = self.config.image_size
        rows, columns = self.config.window_slices(model_size)
        whole = layer.new_full((len(layer), layer.shape[1], model_size, model_size), fill)
        whole[..., rows, columns] = layer
        if size != model_size:
            whole = F.interpolate(whole, size=(size, size), mode="bilinear", align_corners=False)
        return whole

    def render_layers(self, faces: Tensor, field: Tensor, codes: Tensor, target_mesh: Tensor,
                      gate: Tensor | None = None, *, detach_gain: bool = False) -> Rendered:
        """``faces`` (N, C, S, S) in [-1, 1] at the model's size warped through ``field``, shaded, and
        painted near ``target_mesh``'s mouth (``gate``: as :meth:`layers`), with every layer kept.
        ``detach_gain``: the painter sees the shader's gain as a constant (training: the shader learns
        only from its own fit)."""
        warped = warp(faces, field)
        outline = self.shade_outline(target_mesh)
        log_gain = self.shade(faces, warped, field, codes, outline)
        shaded = with_gain(warped, log_gain.detach() if detach_gain and log_gain is not None else log_gain)
        paint = self.layers(faces, shaded, field, codes, target_mesh, outline, gate)
        output, keep = self.compose(shaded, paint)
        return Rendered(output, keep, warped, log_gain, paint, outline)

    def forward(self, faces: Tensor, source_mesh: Tensor, target_mesh: Tensor,
                field: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``faces`` (N, C, S, S) in [-1, 1] at the model's size, shaded, and painted only near the
        target mouth and only when a mouth is open. Returns (output, mask A, warped)."""
        field = self.field(source_mesh, target_mesh) if field is None else field
        rendered = self.render_layers(faces, field, self.codes(source_mesh, target_mesh).to(faces.device),
                                      target_mesh.to(faces.device), paint_gate(source_mesh, target_mesh))
        return rendered.output, rendered.keep, rendered.warped



def with_gain(faces: Tensor, log_gain: Tensor | None) -> Tensor:
    """``faces`` (N, C, S, S in [-1, 1]) with their light scaled by exp(``log_gain``) (N, 1, s, s, upsampled
    to S): the gain acts on light (0 at -1), not on [-1, 1] values."""
    if log_gain is None:
        return faces
    if log_gain.shape[-1] != faces.shape[-1]:
        log_gain = F.interpolate(log_gain, size=faces.shape[-2:], mode="bilinear", align_corners=False)
    return faces + (faces + 1) * log_gain.expm1()


class CropMesher:
    """Meshes of faces already aligned on exaug's template: each crop is re-cut into the 192-pixel
    mesh crop (a similarity, zero outside), meshed, and mapped back into the crop's pixels."""

    def __init__(self, image_size: int, mesh: FaceMesh | None = None):
        self.mesh = mesh or FaceMesh()
        source = torch.from_numpy(get_template(TEMPLATE, image_size).points)
        self.to_mesh = estimate_similarity(source[None], torch.from_numpy(crop_template().points))
        self._grid = crop_grid(self.to_mesh, INPUT_SIZE, image_size)

    @torch.no_grad()
    def __call__(self, faces: Tensor, depth: bool = False) -> tuple[Tensor, Tensor]:
        """(landmarks (N, 468, 2) in crop pixels, face scores (N,)) for uint8 (N, 3, S, S) faces;
        ``depth``: (N, 468, 3), the mesh's relative depth kept (on the same scale)."""
        device = next(self.mesh.parameters()).device
        transform = self.to_mesh.to(device)
        crops = torch.stack([warp_faces(face.to(device).float(), transform, INPUT_SIZE)[0] for face in faces])
        result = self.mesh(crops)
        landmarks = to_source(result.landmarks, transform.expand(len(faces), -1, -1))
        return landmarks if depth else landmarks[..., :2], result.scores.cpu()

    def read(self, faces: Tensor) -> Tensor:
        """(N, 468, 2) landmarks in crop pixels of float faces (N, C, S, S) in [0, 255] (C = 1: grey),
        with gradients to the faces: training's ``mesh`` term asks its outputs to be read as the real
        target faces are. The crop is one fixed bilinear grid (within 0.03 px of :meth:`__call__`'s
        on CK+ faces, at most 0.15)."""
        grid = self._grid.to(faces.device).expand(len(faces), -1, -1, -1)
        crops = F.grid_sample(faces.expand(-1, 3, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)
        back = invert_affine(self.to_mesh).to(faces).expand(len(faces), -1, -1)
        return apply_affine(back, self.mesh(crops).landmarks[..., :2])


class GuidedExpressionGenerator:
    """Inference with the geometry-guided generator, with :class:`~exaug.model.generator.ExpressionGenerator`'s
    interface (uint8 aligned faces in and out) plus ``like``: the expression of other faces.

    A luma model paints the Y channel; the chroma is warped with the same field, so colour moves with
    the skin. ``intensity`` scales the motion continuously from 0 (the face's own points, its
    present expression removed: "at rest") through 1 (the mean CK+ peak of that expression for this
    face shape) to 1.5 (the same motion half as large again).
    """

    resolution_free = True  # aligned faces of any size: warped at their own, painted at the model's
    max_intensity = 1.5  # the CK+ mean motion extrapolated up to half as large again
    takes_like = True  # generate(like=...): another face's expression, read from its mesh

    def __init__(self, model: GuidedGenerator, meta: dict, device: str | torch.device = "cpu", *,
                 max_batch: int | None = None):
        self.device = torch.device(device)
        self._model = model.to(self.device).eval()
        self._model.painter.to(memory_format=torch.channels_last)  # its convolutions run 10-15% faster on a CPU
        self._meta = meta
        self._mesher = CropMesher(model.config.image_size)
        self._mesher.mesh.to(self.device)
        # On a CPU, 8 faces at a time: the painter's activations and the spline's kernel matrices of
        # 16 faces no longer fit the cache (the MJPEG clip's 398 faces: 4.5-4.8 s at 8, 5.2-5.3 s at
        # 16, 5.0-5.2 s at 4, one thread; 2.9-3.1 s vs 3.2-3.4 s at 8 vs 16 on two).
        self.max_batch = max_batch or (128 if self.device.type == "cuda" else 8)
        # bf16 where the CPU computes in it (what it saves and changes: bf16_pays_on); held-out CK+
        # judged the same either way (MODEL_CARD.md).
        self.bf16 = bf16_pays_on(self.device)

    @classmethod
    def load(cls, path, device: str | torch.device = "auto", *, max_batch: int | None = None) -> GuidedExpressionGenerator:
        from dataclasses import fields

        from exaug.device import resolve_device
        from exaug.model.checkpoint import load_guided

        painter, geometry, meta = load_guided(path)
        known = {field.name for field in fields(PainterConfig)}
        settings = {"shading": False, "face_shading": False, **{k: v for k, v in meta["painter"].items() if k in known}}
        if "window" not in settings:
            raise ExaugError(f"{path}: a guided generator from before the painter's mouth window; retrain it "
                             "with this exaug (exaug train --arch guided)")
        model = GuidedGenerator(PainterConfig(**{**settings, "window": tuple(settings["window"])}),
                                ExpressionGeometry.from_state(geometry))
        model.painter.load_state_dict(painter)
        return cls(model, meta, resolve_device(device), max_batch=max_batch)

    image_size = property(lambda self: self._model.config.image_size)
    channels = property(lambda self: self._model.config.channels)
    expressions = property(lambda self: tuple(self._model.geometry.expressions))
    template = property(lambda self: TEMPLATE)
    meta = property(lambda self: dict(self._meta))

    def meshes(self, faces: Tensor) -> Tensor:
        """(N, 468, 2) meshes of aligned uint8 faces (any size), in the model's crop pixels."""
        if not len(faces):
            return torch.zeros(0, 468, 2, device=self.device)
        return torch.cat([self._mesher(resize_faces(faces[i:i + self.max_batch], self.image_size))[0]
                          for i in range(0, len(faces), self.max_batch)])

    def moves(self, meshes: Tensor) -> Tensor:
        """(N,) bool: whether faces with these meshes (any pixels: the measures are ratios) would change
        at all; those in profile or tilted steeply (:func:`facing` 0) come back exactly as they are,
        so a video need not cut them out and paste them back."""
        return facing(meshes[..., :2].float()) > 0

    @torch.inference_mode()
    def render(self, faces: Tensor, source_mesh: Tensor, target_mesh: Tensor) -> Tensor:
        """Faces moved from their meshes to ``target_mesh`` (the model's crop pixels), uint8 (N, 3, S, S)
        at the faces' own size S: the warp is applied at that size, the painter runs at the model's.
        Faces in profile or tilted steeply (:func:`facing` 0) come back exactly as they are."""
        out = faces.to(self.device, copy=True)
        for start in range(0, len(faces), self.max_batch):
            part = slice(start, start + self.max_batch)
            source = source_mesh[part].to(self.device)
            weight = facing(source).to(source.dtype)
            if (moving := (weight > 0).nonzero()[:, 0]).numel():
                # exactly the target at weight 1
                target = torch.lerp(source, target_mesh[part].to(self.device), weight[:, None, None])
                out[part][moving] = self._render_moving(out[part][moving], source[moving], target[moving], weight[moving])
        return out

    def _render_moving(self, full: Tensor, source: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        """:meth:`render` for faces that move (``weight``: how much, from :func:`facing`)."""
        field = self._model.field(source, target).float()
        # The warp is linear: the luma of the warped colours is the warped luma, so the colours are
        # warped once (three channels, not luma and three chroma offsets).
        warped, chroma = encode(warp(full, field), self.channels)
        codes = self._model.codes(source, target).to(self.device)
        outline = self._model.shade_outline(target)
        log_gain = self._model.shade(encode(F.adaptive_avg_pool2d(full.float(), SHADE_SIZE), self.channels)[0],
                                     warped, field, codes, outline)
        log_gain = None if log_gain is None else log_gain * weight[:, None, None, None].float()
        edited = with_gain(warped, log_gain)
        gate = paint_gate(source, target) * weight
        if (painted := (gate > 0).nonzero()[:, 0]).numel():  # closed mouths: moved and shaded, never painted
            at_model_size = full.shape[-1] == self.image_size
            small, small_chroma = encode(full[painted] if at_model_size else
                                         resize_faces(full[painted], self.image_size), self.channels)
            shaded = edited[painted] if at_model_size else with_gain(
                warp(small, field[painted]), None if log_gain is None else log_gain[painted])
            paint = self._model.layers(small, shaded, field[painted], codes[painted], target[painted], outline[painted],
                                       gate[painted], self.bf16)
            # A gaping mouth's opening is the painter's alone (:func:`stretched_lips`); training leaves
            # the mask to the painter, whose CK+ peaks rarely gape as far.
            stretched = stretched_lips(source[painted], target[painted], self.image_size,
                                       *self._model.config.window_slices()) * gate[painted, None, None, None]
            paint = paint._replace(keep=paint.keep * (1 - stretched))
            edited[painted], keep = self._model.compose(edited[painted], paint)
            if chroma is not None:  # unpainted faces keep every pixel's moved colour
                chroma[painted] = self._paint_chroma(chroma[painted], keep, small_chroma, field[painted],
                                                     source[painted], target[painted], stretched)
        return decode(edited, chroma)

    def _paint_chroma(self, chroma: Tensor, keep: Tensor, small_chroma: Tensor, field: Tensor, source: Tensor,
                      target: Tensor, stretched: Tensor) -> Tensor:
        """``chroma`` (N, 3, S, S) of painted faces under the painter's ``keep`` (mask A): mostly
        painted pixels are new texture (teeth, the mouth's inside) and no colour is moved onto them;
        lightly retouched ones (A > 0.75) keep the skin's and lips' own colour. The inside of a
        gaping mouth (``stretched``, over the painter's window: :func:`stretched_lips`) takes
        :data:`MOUTH_INSIDE` of the lips' colour: without any it was a flat black hole, a dark red
        one is a mouth. Mouths that close get their lips' colour on the teeth squeezed between the
        lips (:meth:`_colour_lips`)."""
        chroma = chroma * ((keep - 0.25) / 0.5).clamp(0, 1)
        if stretched.any():
            lips = lip_colour(small_chroma, source, *lips_box(source, self.image_size))
            chroma = chroma + MOUTH_INSIDE * lips[..., None, None] * self._model.whole_face(stretched, 0.0, chroma.shape[-1])
        closes = mouth_opening(target) < mouth_opening(source)
        if closes.any():
            chroma[closes] = self._colour_lips(small_chroma[closes], chroma[closes], field[closes], source[closes],
                                               target[closes])
        return chroma

    def _colour_lips(self, small_chroma: Tensor, chroma: Tensor, field: Tensor, source: Tensor,
                     target: Tensor) -> Tensor:
        """``chroma`` (N, 3, S, S) of edited faces with the teeth a closing mouth squeezes between its
        lips (:func:`squeezed_teeth`) given the colour of the face's own lips, read from the source
        faces' chroma at the model's size (``small_chroma``). Unfixed, that band kept the teeth's colour, and less of
        it where the painter partly paints (painted pixels get no chroma): a grey-blue line between
        pink lips. Its brightness stays the warp's and the painter's: on held-out CK+ smiles closed
        to neutral it was already the real closed lips' (a dark line where they meet; the lips' mean
        is brighter)."""
        size = self.image_size
        band = torch.zeros(len(chroma), 1, size, size, device=chroma.device)
        rows, columns = lips_box(target, size)
        band[..., rows, columns] = F.avg_pool2d(squeezed_teeth(source, target, field, size, rows, columns), 3, 1, 1,
                                                count_include_pad=False)
        if chroma.shape[-1] != size:
            band = F.interpolate(band, size=chroma.shape[-2:], mode="bilinear", align_corners=False)
        lips = lip_colour(small_chroma, source, *lips_box(source, size))
        return chroma * (1 - band) + lips[..., None, None] * band

    def targets(self, meshes: Tensor, expressions: list[str] | None, intensity: float | Tensor,
                like: Tensor | None = None) -> Tensor:
        return self._model.geometry.target(meshes.cpu().double(), expressions, torch.as_tensor(intensity).cpu(),
                                           like=None if like is None else like.cpu().double()).float()

    def generate(self, faces: Tensor, expressions: str | list[str] | Tensor | None = None,
                 intensity: float | Tensor = 1.0, *, like: Tensor | None = None, meshes: Tensor | None = None) -> Tensor:
        """Each aligned uint8 face (N, 3, S, S; any S, the model's template) in an expression (one name,
        one per face, or indices), or with the expression of the aligned faces ``like`` (one, or one
        per face). ``meshes``: the faces' meshes in their own pixels when the caller has them already
        (a video tracks them), else they are found here. Returns uint8 (N, 3, S, S)."""
        if len(faces) == 0:
            return faces.new_zeros((0, 3, *faces.shape[-2:]))
        meshes = self._own_meshes(faces, meshes)
        names = None
        if like is None:
            names = self._names(expressions, len(faces))
        else:
            like = self.meshes(like)  # one reference is meshed once, then serves every face
            like = like.expand(len(faces), -1, -1) if len(like) == 1 else like
        return self.render(faces, meshes, self.targets(meshes, names, intensity, like)).to(faces.device)

    def _own_meshes(self, faces: Tensor, meshes: Tensor | None) -> Tensor:
        if meshes is None:
            return self.meshes(faces)
        return meshes[..., :2].to(self.device).float() * (self.image_size / faces.shape[-1])

    def _names(self, expressions: str | list[str] | Tensor, n: int) -> list[str]:
        """One expression name per face, from a name, a list of names, or indices into :attr:`expressions`."""
        if isinstance(expressions, str):
            return [expressions] * n
        if isinstance(expressions, Tensor):
            return [self.expressions[int(index)] for index in expressions.flatten().tolist()]
        return list(expressions)

    def generate_all(self, faces: Tensor, expressions: list[str], intensity: float | Tensor = 1.0, *,
                     meshes: Tensor | None = None) -> Tensor:
        """Every face (any size, as :meth:`generate`) in every listed expression: uint8 (N, E, 3, S, S);
        each face is meshed once."""
        n, e = len(faces), len(expressions)
        if n == 0:
            return faces.new_zeros((0, e, 3, *faces.shape[-2:]))
        meshes = self._own_meshes(faces, meshes).repeat_interleave(e, 0)
        targets = self.targets(meshes, list(expressions) * n, intensity)
        out = self.render(faces.repeat_interleave(e, 0), meshes, targets)
        return out.view(n, e, *out.shape[1:]).to(faces.device)
