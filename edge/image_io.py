"""Reading, validating and writing images as RGB ``uint8`` arrays.

Everything in doorface works on RGB ``uint8`` arrays of shape (H, W, 3). This module is the one place where files and
foreign arrays (camera frames, OpenCV BGR images, user code) are turned into that form, and where bad input is
rejected with an :class:`ImageError` that names the file and the reason.

Conversion rules (shared by :func:`load_image` and :func:`to_rgb`):

* ``uint8`` is taken as is; ``uint16`` is scaled to 8 bits by dropping the low byte (``>> 8``, as OpenCV does).
* Floating point: if the maximum value is ``<= 1.0`` the image is taken to be in 0..1 and multiplied by 255,
  otherwise it is taken to be in 0..255. Values are rounded to the nearest integer. NaN/inf, negative values and
  values above 255 are rejected. (An all-dark 0..255 float image whose maximum is <= 1 is therefore read as 0..1;
  pass ``uint8`` to avoid the ambiguity.)
* Grayscale (H×W or H×W×1) is repeated into three equal channels; a fourth (alpha) channel is dropped, never
  composited.

Size first: the width and height are read from the file's header (JPEG, PNG, BMP, GIF, WebP, TIFF, PNM) and checked
against the pixel limit before anything is decoded, so a 20000×20000 PNG of a few kilobytes is refused at once, not
after the decoder has taken gigabytes (which kills a 1–2 GB Raspberry Pi). A file whose header does not say its size
in one of those formats is refused: its decoded size could not be bounded.

Limitation: OpenCV decodes a JPEG that is cut off part-way through (after its header) without an error, filling the
missing part with gray; such files cannot be told apart from valid ones here. Files too short to hold a complete
header are rejected.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

#: File name extensions (lower case) of the images doorface takes from a folder (enrollment, image-folder sources):
#: the formats every OpenCV build decodes. Other files in a folder are ignored; a file named explicitly is tried
#: whatever its extension.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

logger = logging.getLogger(__name__)

#: Largest image (height × width) :func:`load_image` accepts. 10000×10000 (1e8 pixels) still loads.
MAX_IMAGE_PIXELS = 120_000_000

# Keep the bit depth and let the decoder reduce the channels to 1 or 3 (alpha dropped). Unlike IMREAD_UNCHANGED, this
# applies the EXIF orientation tag, so phone photos come out upright (the same as cv2.imread).
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR

_SHAPES = "HxW, HxWx1, HxWx3 or HxWx4"
_DTYPES = "uint8 (uint16 and float 0..1 / 0..255 are converted)"


class ImageError(ValueError):
    """An image file or array that cannot be used; the message names the path (if any) and the reason."""


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file into a new contiguous RGB ``uint8`` array of shape (H, W, 3).

    Any format OpenCV decodes is accepted (JPEG, PNG, BMP, TIFF, WebP, ...), including non-ASCII paths, 16-bit,
    grayscale, gray+alpha and RGBA images (alpha is dropped). The EXIF orientation of JPEGs is applied.

    Raises:
        ImageError: the file is missing, not a regular file, empty, unreadable, not a decodable image, has zero
            size, or has more than :data:`MAX_IMAGE_PIXELS` pixels.
    """
    shown = _display_path(path)
    return decode_image(_read_bytes(path, shown), shown)


def decode_image(data, shown: str = "(bytes)", *, max_pixels: Optional[int] = None) -> np.ndarray:
    """Decode an encoded image (bytes or a uint8 array) as :func:`load_image` does, after checking the size its
    header states against ``max_pixels`` (default :data:`MAX_IMAGE_PIXELS`); ``shown`` names it in errors."""
    limit = f"MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS:,}" if max_pixels is None else f"{max_pixels:,}"
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    size = image_size(data.tobytes())  # a copy of the file, not of its pixels: a TIFF's header may be at its end
    if size is None:
        raise _load_error(shown, "not a decodable image (corrupt or unsupported format): its size cannot be read "
                                 "from its header (JPEG, PNG, BMP, GIF, WebP, TIFF and PNM are read); re-save it as "
                                 "JPEG or PNG")
    width, height = size
    if width * height > max_pixels:
        raise _load_error(shown, f"image is {width}x{height} = {width * height:,} pixels, more than the limit of "
                                 f"{limit}; downscale it before loading (refused from its header, before decoding)")
    try:
        decoded = cv2.imdecode(data, _DECODE_FLAGS)
    except cv2.error as exc:  # e.g. OpenCV's own pixel limit, or a malformed header it asserts on
        raise _load_error(shown, f"not a decodable image ({_cv_message(exc)})") from None
    except MemoryError:
        raise _load_error(shown, "not enough memory to decode it (image too large?)") from None
    if decoded is None:
        raise _load_error(shown, "not a decodable image (corrupt or unsupported format); re-save it as JPEG or PNG")

    height, width = decoded.shape[:2]
    if height * width == 0:
        raise _load_error(shown, "image has zero size")
    if height * width > max_pixels:  # a header that understated the size
        raise _load_error(
            shown,
            f"image is {width}x{height} = {height * width:,} pixels, more than the limit of {limit}; downscale it "
            "before loading",
        )
    if decoded.ndim == 3 and decoded.shape[2] == 2:  # gray + alpha, should a decoder ever return it
        decoded = decoded[..., 0]
    if decoded.dtype != np.uint8:
        logger.debug("converting %s from %s to uint8", shown, decoded.dtype)

    try:
        rgb = to_rgb(decoded, bgr=True)
    except ImageError as exc:
        raise _load_error(shown, str(exc)) from None
    logger.debug("loaded %s: %dx%d", shown, width, height)
    return rgb


def to_rgb(array: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """Validate an image array and return it as a new contiguous RGB ``uint8`` array of shape (H, W, 3).

    ``array`` may be H×W, H×W×1, H×W×3 or H×W×4 of dtype ``uint8``, ``uint16`` or float (see the module docstring
    for how those are scaled). ``bgr=True`` means the channels are in OpenCV's BGR(A) order and are swapped. The
    input is never modified, and the result never shares memory with it.

    Raises:
        ImageError: not a numpy array, wrong shape, zero height or width, unsupported dtype (``bool``, signed
            integers, ...), or float values that are not finite or outside 0..255.
    """
    if not isinstance(array, np.ndarray):
        raise ImageError(f"image must be a numpy array, got {type(array).__name__}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(f"image array must be {_SHAPES} {_DTYPES}, got shape {array.shape} dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"image has zero size (shape {array.shape})")

    pixels = np.ascontiguousarray(_to_uint8(array))
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels == 1:
        return cv2.cvtColor(pixels.reshape(pixels.shape[:2]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    if bgr:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return pixels.copy() if np.may_share_memory(pixels, array) else pixels


def save_image(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an RGB image to ``path``; the format follows the extension. Parent directories are created.

    ``rgb`` may be anything :func:`to_rgb` accepts (channels taken as RGB(A)). Non-ASCII paths work.

    Raises:
        ImageError: the extension is missing or not one OpenCV can write, or ``rgb`` is not a valid image.
        OSError: the file cannot be written (permissions, disk full, ...).
    """
    shown = _display_path(path)
    target = Path(path)
    ext = target.suffix.lower()
    if not ext or not cv2.haveImageWriter(f"image{ext}"):
        raise ImageError(f"cannot save image {shown}: unsupported file extension {ext or '(none)'!r}; use .jpg or .png")
    try:
        bgr = cv2.cvtColor(to_rgb(rgb), cv2.COLOR_RGB2BGR)
    except ImageError as exc:
        raise ImageError(f"cannot save image {shown}: {exc}") from None
    try:
        ok, encoded = cv2.imencode(ext, bgr)
    except cv2.error as exc:
        raise ImageError(f"cannot save image {shown}: OpenCV cannot encode it ({_cv_message(exc)})") from None
    if not ok:
        raise ImageError(f"cannot save image {shown}: OpenCV failed to encode it as {ext}")
    target.parent.mkdir(parents=True, exist_ok=True)
    encoded.tofile(target)
    logger.debug("saved %s: %dx%d", shown, bgr.shape[1], bgr.shape[0])


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(head: bytes) -> Optional[tuple[int, int]]:
    """(width, height) as stated by the header of an image file (its first bytes; for TIFF, wherever its first
    directory is), or None when the format is not one this reads (JPEG, PNG, BMP, GIF, WebP, TIFF, PNM) or the
    header is cut short or damaged. Nothing is decoded."""
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head.startswith(b"\xff\xd8"):
            return _jpeg_size(head)
        if head.startswith(b"BM"):
            if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
                return struct.unpack("<HH", head[18:22])
            width, height = struct.unpack("<ii", head[18:26])
            return abs(width), abs(height)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", head[6:10])
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(head)
        if head[:1] == b"P" and head[1:2] in b"123456" and len(head) > 2:
            return _pnm_size(head)
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _jpeg_size(head: bytes) -> Optional[tuple[int, int]]:
    at = 2
    while at + 4 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # stand-alone markers
            at += 2
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", head[at + 5:at + 9])
            return width, height
        if marker in (0xD9, 0xDA):  # end of image, start of scan before any frame header
            return None
        at += 2 + struct.unpack(">H", head[at + 2:at + 4])[0]
    return None


def _webp_size(head: bytes) -> Optional[tuple[int, int]]:
    chunk = head[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        b0, b1, b2, b3 = head[21:25]
        return 1 + (((b1 & 0x3F) << 8) | b0), 1 + (((b3 & 0x0F) << 10) | (b2 << 2) | ((b1 & 0xC0) >> 6))
    if chunk == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    return None


def _tiff_size(head: bytes) -> Optional[tuple[int, int]]:
    order = "<" if head[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", head[4:8])
    (count,) = struct.unpack(order + "H", head[ifd:ifd + 2])
    found = {}
    for n in range(count):
        entry = head[ifd + 2 + 12 * n:ifd + 14 + 12 * n]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            value = entry[8:10] if kind == 3 else entry[8:12]
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value)[0]
    return (found[256], found[257]) if len(found) == 2 else None


def _pnm_size(head: bytes) -> Optional[tuple[int, int]]:
    tokens: list[int] = []
    for line in head[2:4096].split(b"\n"):
        for word in line.split(b"#", 1)[0].split():
            tokens.append(int(word))
            if len(tokens) == 2:
                return tokens[0], tokens[1]
    return None


def _load_error(shown: str, reason: str) -> ImageError:
    return ImageError(f"cannot read image {shown}: {reason}")


def _display_path(path: str | os.PathLike[str]) -> str:
    try:
        return f"'{os.fspath(path)}'"
    except TypeError:
        return repr(path)


def _read_bytes(path: str | os.PathLike[str], shown: str) -> np.ndarray:
    """The file's bytes, after checking it is a non-empty regular file (so FIFOs and devices never block)."""
    try:
        path = os.fspath(path)  # rejects ints, which os.stat and np.fromfile would take as file descriptors
    except TypeError:
        raise _load_error(shown, f"invalid path (expected str or pathlib.Path, got {type(path).__name__})") from None
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise _load_error(shown, "file not found") from None
    except OSError as exc:
        raise _load_error(shown, f"cannot access the file ({exc.strerror or exc})") from None
    except ValueError as exc:  # a NUL byte in the path
        raise _load_error(shown, f"invalid path ({exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise _load_error(shown, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise _load_error(shown, "not a regular file")
    if info.st_size == 0:
        raise _load_error(shown, "file is empty")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise _load_error(shown, f"cannot read the file ({exc.strerror or exc})") from None
    except MemoryError:
        raise _load_error(shown, "not enough memory to read the file") from None
    if data.size == 0:  # emptied since the stat
        raise _load_error(shown, "file is empty")
    return data


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """``array`` as uint8 per the module's scaling rules; may return ``array`` itself when it already is uint8."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("float image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 255.0:
            raise ImageError(
                f"float image values must lie in 0..1 or 0..255, got min {low:g} max {high:g}; rescale it first"
            )
        scaled = array * 255.0 if high <= 1.0 else array
        return np.rint(scaled).astype(np.uint8)
    raise ImageError(f"image array must be {_SHAPES} {_DTYPES}, got shape {array.shape} dtype {array.dtype}")


def _cv_message(exc: BaseException) -> str:
    """The useful part of a ``cv2.error`` message, without OpenCV's source location."""
    text = " ".join(str(exc).split())
    return text.partition("error: ")[2] or text or type(exc).__name__
