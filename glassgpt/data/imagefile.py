"""Image files and the sample type: decoding and validation of user images, and `Sample`.

`load_image` turns user bytes (API, chat, folders, cached packages) into an RGB image or raises
one `ImageError` with a one-line message: corrupt, truncated, empty, tiny, huge, animated,
CMYK, 16-bit and non-image inputs are refused, never crashed on. The image tasks
(glassgpt.data.images, glassgpt.data.image_packs) build on this module; it imports neither.
"""

from __future__ import annotations

import io
import random
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from glassgpt.errors import DataError

MIN_SIDE = 4  # pixels; a 1×1 image carries nothing to see
MAX_SIDE = 8192
MAX_PIXELS = 36_000_000  # checked from the header, before any pixel is decoded
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
RENDER = 64  # side of procedurally rendered images (the encoder resizes anyway)


class ImageError(DataError):
    """An image that cannot be used: corrupt, truncated, too small or large, or unsupported."""


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImageError("image input needs Pillow: pip install pillow") from None
    return Image


# --- decoding and validation ---------------------------------------------------------------
def load_image(src, *, name: str = "image", animated: str = "error"):
    """bytes, a path, or a PIL image → an RGB PIL image (validated).

    animated: "error" refuses multi-frame images; "first" takes the first frame (the API's
    GIF rule). Every failure is an ImageError with a message that names `name`."""
    Image = _pil()
    from PIL import UnidentifiedImageError

    if isinstance(src, Image.Image):
        im = src
    else:
        if isinstance(src, (str, Path)):
            p = Path(src)
            name = name if name != "image" else str(p)
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                raise ImageError(f"{name}: file not found") from None
            except OSError as e:
                raise ImageError(f"{name}: cannot read ({e.strerror or e})") from None
        elif isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
        else:
            raise ImageError(f"{name}: expected image bytes, a path or a PIL image, not {type(src).__name__}")
        if not data:
            raise ImageError(f"{name}: the file is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            if isinstance(e, UnidentifiedImageError):
                raise ImageError(f"{name}: not an image Pillow can read (send PNG, JPEG, WebP or GIF)") from None
            raise ImageError(f"{name}: image is too large (limit {MAX_SIDE}×{MAX_SIDE}, {MAX_PIXELS:,} pixels)") from None
        except Exception as e:  # a damaged header
            raise ImageError(f"{name}: corrupt image header ({type(e).__name__})") from None
        if im.format not in FORMATS:
            raise ImageError(f"{name}: {im.format} images are not accepted (send PNG, JPEG, WebP or GIF)")
    w, h = im.size
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image has zero size ({w}×{h})")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ImageError(f"{name}: image is {w}×{h}; at least {MIN_SIDE}×{MIN_SIDE} pixels are needed")
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise ImageError(f"{name}: image is {w}×{h}, too large (limit {MAX_SIDE}×{MAX_SIDE}, {MAX_PIXELS:,} pixels); downscale it")
    frames = getattr(im, "n_frames", 1)
    if frames > 1 and animated != "first":
        raise ImageError(f"{name}: animated image with {frames} frames; send a single still image")
    if im.mode == "CMYK":
        raise ImageError(f"{name}: CMYK images are not supported; convert it to RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F") or im.info.get("bits", 8) > 8 \
            or (getattr(im, "format", None) == "PNG" and im.mode.startswith("I")):
        raise ImageError(f"{name}: 16-bit or high-bit-depth images ({im.mode}) are not supported; save it as 8-bit")
    if im.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "La"):
        raise ImageError(f"{name}: image mode {im.mode} is not supported; convert it to RGB")
    try:
        if frames > 1:
            im.seek(0)
        im.load()
    except Exception as e:  # truncated data, bad checksums, broken compressed streams
        raise ImageError(f"{name}: truncated or corrupt image data ({str(e).splitlines()[0][:80] or type(e).__name__})") from None
    return to_rgb(im)


def to_rgb(im):
    """Any 8-bit mode → RGB; transparency composited onto white."""
    Image = _pil()
    if im.mode == "RGB":
        return im
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
        return bg
    return im.convert("RGB")


def decode_data_url(url: str, *, name: str = "image", animated: str = "first"):
    """`data:image/...;base64,...` → RGB image (ImageError otherwise)."""
    import base64
    import binascii

    if not isinstance(url, str) or not url.startswith("data:"):
        raise ImageError(f"{name}: expected a data: URL")
    head, sep, payload = url.partition(",")
    if not sep or ";base64" not in head:
        raise ImageError(f"{name}: expected data:image/<format>;base64,<data>")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{name}: malformed base64 data") from None
    return load_image(data, name=name, animated=animated)


def to_data_url(im, fmt: str = "PNG") -> str:
    import base64

    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class Sample:
    image: object  # PIL.Image (RGB)
    question: str
    answer: str
    task: str
    # For questions phrased many ways (glassgpt.data.image_chat): the kind of question asked
    # ("colour"), what its phrasings fill in ({"shape": "circle"}), and every fact the image
    # answers, kind -> (English answer, Chinese answer), so later turns can ask about the same image.
    kind: str = ""
    slots: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    accept: dict = field(default_factory=dict)  # kind -> ([English], [Chinese]) answers that also count

    def messages(self, with_answer: bool = True) -> list[dict]:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.question}]}]
        if with_answer:
            msgs.append({"role": "assistant", "content": self.answer})
        return msgs


def _rng(seed: int, *parts) -> random.Random:
    return random.Random(zlib.crc32(repr((seed,) + parts).encode()))
