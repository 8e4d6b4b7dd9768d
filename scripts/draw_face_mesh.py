"""Draw the face mesh and its named index groups on example faces: docs/face_mesh.png.

    python scripts/draw_face_mesh.py [--out docs/face_mesh.png]

Left: a bundled example portrait (MTCNN detection, then exaug.faces.mesh.MeshFitter, drawn in the
source image's pixels). Right: a CK+ neutral frame and the same sequence's surprise peak, to show
what the groups measure (the inner-lip opening, the brows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from exaug.faces.detect import FaceDetector
from exaug.faces.mesh import GROUPS, MeshFitter, load_triangles
from exaug.io.images import load_image
from exaug.io.sheets import save_atomically

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
COLOURS = {"lips_outer": (230, 40, 40), "lips_inner": (255, 150, 0), "left_eye": (30, 144, 255),
           "right_eye": (0, 200, 255), "left_brow": (50, 205, 50), "right_brow": (160, 230, 60),
           "jaw_line": (200, 0, 200), "nose": (255, 220, 0), "face_oval": (255, 255, 255)}
PANEL = 512


def draw(image: np.ndarray, landmarks: np.ndarray, triangles: np.ndarray, title: str) -> Image.Image:
    """The face's square around its mesh, scaled to PANEL pixels, with the tessellation and groups."""
    low, high = landmarks[:, :2].min(0), landmarks[:, :2].max(0)
    centre, half = (low + high) / 2, (high - low).max() * 0.65
    box = (*(centre - half), *(centre + half))
    panel = Image.fromarray(image).crop(tuple(int(round(v)) for v in box)).resize((PANEL, PANEL), Image.LANCZOS)
    points = (landmarks[:, :2] - (centre - half)) * PANEL / (2 * half)
    pen = ImageDraw.Draw(panel, "RGBA")
    for triangle in triangles:
        pen.polygon([tuple(points[i]) for i in triangle], outline=(255, 255, 255, 70))
    for name, indices in GROUPS.items():
        if name == "nose":  # not a contour: its points
            for i in indices:
                pen.ellipse((points[i][0] - 3, points[i][1] - 3, points[i][0] + 3, points[i][1] + 3), fill=COLOURS[name])
            continue
        closed = name in ("lips_outer", "lips_inner", "left_eye", "right_eye", "face_oval")
        chain = [tuple(points[i]) for i in indices] + ([tuple(points[indices[0]])] if closed else [])
        pen.line(chain, fill=COLOURS[name], width=3 if name != "face_oval" else 1)
    pen.rectangle((0, 0, PANEL, 22), fill=(0, 0, 0, 170))
    pen.text((6, 5), title, fill=(255, 255, 255))
    return panel


def legend(width: int) -> Image.Image:
    strip = Image.new("RGB", (width, 26), (20, 20, 20))
    pen = ImageDraw.Draw(strip)
    x = 8
    for name, colour in COLOURS.items():
        pen.rectangle((x, 8, x + 12, 20), fill=colour)
        pen.text((x + 16, 8), name, fill=(230, 230, 230))
        x += 26 + 7 * len(name)
    return strip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "face_mesh.png")
    args = parser.parse_args()
    images = [load_image(REPO / "examples" / "grace_hopper.jpg"),
              load_image(DATA / "expressions/ckplus128/neutral/S010_002_00000001.png"),
              load_image(DATA / "expressions/ckplus128/surprise/S010_002_00000014.png")]
    titles = ["examples/grace_hopper.jpg", "CK+ S010_002 neutral", "CK+ S010_002 surprise peak"]
    detector, fitter = FaceDetector("cpu"), MeshFitter(device="cpu")
    faces = [found for found in detector.detect(images)]
    faces = [type(found)(found.boxes[:1], found.probs[:1], found.landmarks[:1]) for found in faces]
    meshes = fitter.fit(images, faces).landmarks.numpy()
    triangles = load_triangles().numpy()
    panels = [draw(image, mesh, triangles, title) for image, mesh, title in zip(images, meshes, titles)]
    sheet = Image.new("RGB", (PANEL * len(panels), PANEL + 26))
    for column, panel in enumerate(panels):
        sheet.paste(panel, (column * PANEL, 0))
    sheet.paste(legend(sheet.width), (0, PANEL))
    save_atomically(sheet, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
