"""Load any still image a user is likely to have as an upright 8-bit RGB array; save PNGs atomically.

Phones store rotation in EXIF, scanners write CMYK or 16-bit, web images come as palette or WebP:
every such file must reach the detector looking the way a person sees it, or faces are missed
silently. Failures raise :class:`ImageLoadError` with a reason a person can act on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from exaug.errors import ImageLoadError
from exaug.io.atomic import make_folder_for, replacing

IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jpe .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .jp2 .ico .tga "
    ".heic .heif .avif .svg .jfif".split()
)

LUMA = (0.299, 0.587, 0.114)  # BT.601 weights of R, G, B in grey: what a greyscale model and a thumbnail see
MAX_PIXELS = 150_000_000  # a 150-megapixel scan decodes to 450 MB; decompression bombs are far larger
Image.MAX_IMAGE_PIXELS = None  # load_image checks each file against its own limit, before decoding


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def load_image(path: Path | str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as an upright ``HxWx3 uint8`` RGB array, or raise ImageLoadError saying why.

    An image of more than ``max_pixels`` pixels is refused from its header, before decoding: a few
    kilobytes of PNG can claim 40000x40000 pixels (a decompression bomb) and would take the memory
    of the whole run; running out of memory on one image fails that image only."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageLoadError(path, f"cannot be read ({err.strerror or err})") from err
    if size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF/ICC data it still reads fine
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise ImageLoadError(path, f"{image.width}x{image.height} pixels is over the limit of "
                                               f"{max_pixels:,} (raise it with --max-pixels if the image is real)")
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except MemoryError as err:
        raise ImageLoadError(path, "not enough memory to decode it") from err
    except UnidentifiedImageError as err:
        reason = "unsupported image format" if is_image_path(path) and _looks_binary(path) else "not an image"
        raise ImageLoadError(path, reason) from err
    except (OSError, SyntaxError, ValueError) as err:
        message = str(err)
        if "truncated" in message or "broken data stream" in message or "premature end" in message.lower():
            raise ImageLoadError(path, "truncated or corrupt image data") from err
        raise ImageLoadError(path, f"cannot decode ({message})") from err


def _looks_binary(path: Path) -> bool:
    """Tells an unsupported format (HEIC, AVIF without a plugin) from a text file named .jpg."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    return b"\x00" in head


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Flatten every PIL mode to RGB; alpha is composited on white so transparent areas stay light."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _high_depth_to_rgb(image: Image.Image) -> np.ndarray:
    """16-bit and float greyscale: scale by the format's range, not the image's, so exposure is kept."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
    elif image.mode.startswith("I;16"):
        top = 65535.0
    else:  # 32-bit "I": PIL's mode for some 16-bit PNGs and TIFFs
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
    grey = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def save_png(image: np.ndarray | Image.Image, path: Path) -> None:
    """Write ``image`` (HxWx3 uint8 RGB, or a PIL image) as a PNG at ``path``, replaced whole or not
    at all (:mod:`exaug.io.atomic`: a reader never sees half a PNG); its folder is made if missing."""
    make_folder_for(path)
    with replacing(path) as temporary:
        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(temporary, format="PNG")
