"""Every encoding a user's folder may hold loads upright as RGB, and broken files say why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exaug.errors import ImageLoadError, InputError
from exaug.faces import FaceDetector
from exaug.io.images import load_image
from exaug.io.sources import discover_sources


@pytest.fixture(scope="module")
def portrait(people_dir: Path) -> np.ndarray:
    """A real portrait, small enough that every variant stays quick to detect."""
    image = Image.open(people_dir / "kate_siegel" / "1.jpg").convert("RGB")
    image.thumbnail((400, 400))
    return np.asarray(image)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector("cpu")


def _save_exif_rotated(rgb: np.ndarray, path: Path) -> None:
    """Pixels stored sideways with EXIF orientation 6, as a phone held upright writes them."""
    stored = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif.tobytes(), quality=95)


def _variants(rgb: np.ndarray, folder: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (file, is greyscale). Each is the same picture in another encoding."""
    image = Image.fromarray(rgb)
    grey = image.convert("L")
    made = {
        "exif_rotated.jpg": (lambda p: _save_exif_rotated(rgb, p), False),
        "greyscale.png": (lambda p: grey.save(p), True),
        "grey_alpha.png": (lambda p: grey.convert("LA").save(p), True),
        "rgba.png": (lambda p: image.convert("RGBA").save(p), False),
        "palette.png": (lambda p: image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(p), False),
        "cmyk.jpg": (lambda p: image.convert("CMYK").save(p, quality=95), False),
        "sixteen_bit.png": (lambda p: Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(p), True),
        "lossless.webp": (lambda p: image.save(p, lossless=True), False),
        "plain.bmp": (lambda p: image.save(p), False),
        "plain.tiff": (lambda p: image.save(p), False),
    }
    paths = {}
    for name, (write, is_grey) in made.items():
        write(folder / name)
        paths[name] = (folder / name, is_grey)
    return paths


def test_odd_encodings_load_upright_and_show_the_face(portrait, detector, tmp_path):
    variants = _variants(portrait, tmp_path)
    grey_reference = np.asarray(Image.fromarray(portrait).convert("L"), dtype=np.float64)
    loaded = {}
    for name, (path, is_grey) in variants.items():
        pixels = load_image(path)
        assert pixels.dtype == np.uint8 and pixels.shape == portrait.shape, name
        if is_grey:
            assert np.array_equal(pixels[..., 0], pixels[..., 2]), name
            error = np.abs(pixels[..., 0] - grey_reference).mean()
        else:
            error = np.abs(pixels.astype(np.float64) - portrait).mean()
        assert error < 6.0, f"{name} differs from the original by {error:.1f} grey levels on average"
        loaded[name] = pixels
    found = detector.detect(list(loaded.values()))
    assert all(len(faces) == 1 for faces in found), {n: len(f) for n, f in zip(loaded, found)}


def test_alpha_is_composited_on_white(tmp_path):
    transparent = np.zeros((8, 8, 4), np.uint8)
    Image.fromarray(transparent, "RGBA").save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png") == 255).all()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.jpg", b"these are my holiday notes, not a picture\n", "not an image"),
        ("phone.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00" + bytes(64), "unsupported image format"),
    ],
)
def test_bad_files_say_why(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    assert reason in caught.value.reason and str(path) in str(caught.value)


def test_truncated_jpeg_is_reported(people_dir, tmp_path):
    data = (people_dir / "paul_rudd" / "1.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    assert "truncated" in caught.value.reason


def test_input_layouts(tmp_path, people_dir):
    photo = (people_dir / "paul_rudd" / "1.jpg").read_bytes()
    for rel in ["flat/alice.jpg", "ids/alice/1.jpg", "ids/bob/2.jpg", "expr/Happiness/a.png",
                "expr/angry/b.png", "expr/surprised/carol/c.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(photo)
    (tmp_path / "ids" / "README.txt").write_text("not an image")
    assert [(s.relpath, s.identity, s.expression) for s in discover_sources(tmp_path / "flat")] == [("alice.jpg", "alice", None)]
    assert [(s.identity, s.expression) for s in discover_sources(tmp_path / "ids")] == [("alice", None), ("bob", None)]
    assert [(s.relpath, s.identity, s.expression) for s in discover_sources(tmp_path / "expr")] == [
        ("Happiness/a.png", "", "happy"), ("angry/b.png", "", "anger"), ("surprised/carol/c.png", "carol", "surprise")]


def test_missing_and_empty_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        discover_sources(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files found"):
        discover_sources(tmp_path / "empty")
