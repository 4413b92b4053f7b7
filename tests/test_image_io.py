"""Tests for edge.image_io, on real files written to tmp_path and on the shared sample photos."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import image_io
from edge.image_io import MAX_IMAGE_PIXELS, ImageError, load_image, save_image, to_rgb

RED_RGB = (255, 0, 0)
RED_BGR = (0, 0, 255)


def _write(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array), f"cv2.imwrite failed for {path}"
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _write_gray_alpha_png(path: Path, gray: int, alpha: int, size: tuple[int, int] = (3, 2)) -> Path:
    """An 8-bit gray+alpha PNG (colour type 4), which cv2.imwrite cannot produce."""
    width, height = size
    row = b"\x00" + bytes([gray, alpha]) * width  # filter byte 0, then (gray, alpha) pairs
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 4, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(row * height))
    path.write_bytes(data + _png_chunk(b"IEND", b""))
    return path


def _jpeg_with_orientation(image_bgr: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF block holds only the orientation tag (0x0112)."""
    ok, encoded = cv2.imencode(".jpg", image_bgr)
    assert ok
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    exif = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    raw = encoded.tobytes()
    return raw[:2] + app1 + raw[2:]


# --- load_image: real photos ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sample1.jpg", "sample2.jpg"])
def test_load_sample_photo_matches_opencv(shared_data: Path, name: str) -> None:
    path = shared_data / "group-photos" / name
    rgb = load_image(path)
    assert rgb.dtype == np.uint8
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.flags.c_contiguous and rgb.flags.writeable
    expected = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(rgb, expected)


def test_load_accepts_str_path(shared_data: Path) -> None:
    assert load_image(str(shared_data / "group-photos" / "sample1.jpg")).shape[2] == 3


# --- load_image: bad files --------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match=r"cannot read image '.*nope\.jpg': file not found"):
        load_image(path)


def test_missing_parent_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "no-such-dir" / "x.jpg")


def test_file_in_place_of_directory(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "a.jpg" / "b.jpg")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "photos.jpg"
    folder.mkdir()
    with pytest.raises(ImageError, match=r"photos\.jpg': is a directory"):
        load_image(folder)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageError, match=r"empty\.png': file is empty"):
        load_image(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match=r"noise\.jpg': not a decodable image \(corrupt or unsupported format\)"):
        load_image(path)


def test_truncated_jpeg(shared_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.jpg"
    path.write_bytes((shared_data / "group-photos" / "sample1.jpg").read_bytes()[:200])
    with pytest.raises(ImageError, match=r"truncated\.jpg': not a decodable image"):
        load_image(path)


def test_truncated_png(tmp_path: Path) -> None:
    full = _write(tmp_path / "full.png", np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path = tmp_path / "cut.png"
    path.write_bytes(full.read_bytes()[:100])
    with pytest.raises(ImageError, match="not a decodable image"):
        load_image(path)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 20, encoding="utf-8")
    with pytest.raises(ImageError, match=r"notes\.jpg': not a decodable image"):
        load_image(path)


def test_int_is_not_taken_as_a_file_descriptor() -> None:
    with pytest.raises(ImageError, match=r"invalid path \(expected str or pathlib.Path, got int\)"):
        load_image(0)  # type: ignore[arg-type]


def test_path_with_nul_byte() -> None:
    with pytest.raises(ImageError, match="invalid path"):
        load_image("bad\x00name.jpg")


def test_opencv_error_becomes_image_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "ok.png", np.zeros((4, 4), np.uint8))

    def explode(*_args: object) -> None:
        raise cv2.error("OpenCV(5.0.0) loadsave.cpp:1: error: (-215:Assertion failed) pixels <= limit")

    monkeypatch.setattr(image_io.cv2, "imdecode", explode)
    with pytest.raises(ImageError, match=r"ok\.png': not a decodable image \(\(-215:Assertion failed\)"):
        load_image(path)


def test_memory_error_becomes_image_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "ok.png", np.zeros((4, 4), np.uint8))

    def exhaust(*_args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(image_io.cv2, "imdecode", exhaust)
    with pytest.raises(ImageError, match="not enough memory"):
        load_image(path)


# --- load_image: formats ----------------------------------------------------------------------------------------------


def test_grayscale_png_gives_three_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    rgb = load_image(_write(tmp_path / "gray.png", gray))
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_rgba_png_drops_alpha_and_keeps_rgb_order(tmp_path: Path) -> None:
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[..., :3] = RED_BGR
    bgra[..., 3] = [[255, 128, 0], [1, 200, 255]]  # alpha must be dropped, not composited
    bgra[1, 2, :3] = (255, 0, 0)  # one pure blue pixel
    rgb = load_image(_write(tmp_path / "rgba.png", bgra))
    assert rgb.shape == (2, 3, 3)
    assert tuple(rgb[0, 0]) == RED_RGB
    assert tuple(rgb[0, 2]) == RED_RGB  # fully transparent, colour kept
    assert tuple(rgb[1, 2]) == (0, 0, 255)


def test_gray_alpha_png(tmp_path: Path) -> None:
    rgb = load_image(_write_gray_alpha_png(tmp_path / "ga.png", gray=77, alpha=5))
    assert rgb.shape == (2, 3, 3)
    assert (rgb == 77).all()


def test_16bit_grayscale_png_is_scaled_to_8bit(tmp_path: Path) -> None:
    gray16 = np.array([[0, 255, 256, 0x1234], [0x8000, 0xFF00, 0xFFFF, 1000]], np.uint16)
    rgb = load_image(_write(tmp_path / "deep.png", gray16))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    np.testing.assert_array_equal(rgb[..., 0], (gray16 >> 8).astype(np.uint8))


def test_16bit_colour_png_keeps_rgb_order(tmp_path: Path) -> None:
    bgr16 = np.zeros((2, 2, 3), np.uint16)
    bgr16[..., 2] = 0xFFFF  # red
    bgr16[..., 1] = 0x4000
    rgb = load_image(_write(tmp_path / "deep-colour.png", bgr16))
    assert tuple(rgb[0, 0]) == (255, 0x40, 0)
    expected = cv2.cvtColor(cv2.imread(str(tmp_path / "deep-colour.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(rgb, expected)


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored landscape 20x40 with a white left half; orientation 6 = "rotate 90° clockwise to display".
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255
    path = tmp_path / "phone.jpg"
    path.write_bytes(_jpeg_with_orientation(stored, 6))
    rgb = load_image(path)
    assert rgb.shape == (40, 20, 3)
    assert rgb[5, 10].mean() > 200 and rgb[35, 10].mean() < 50  # the white half is now on top
    np.testing.assert_array_equal(rgb, cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))


def test_bmp_and_webp_load(tmp_path: Path) -> None:
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[:] = RED_BGR
    for ext in (".bmp", ".webp"):
        if not cv2.haveImageWriter(f"x{ext}"):
            continue
        rgb = load_image(_write(tmp_path / f"red{ext}", bgr))
        assert rgb.shape == (8, 8, 3)
        assert rgb[..., 0].min() > 240 and rgb[..., 1:].max() < 15, ext


def test_non_ascii_filename(tmp_path: Path) -> None:
    folder = tmp_path / "Bilder – Haustür"
    folder.mkdir()
    path = folder / "Zoë_日本語_фото.png"
    bgr = np.zeros((3, 5, 3), np.uint8)
    bgr[..., 2] = 255
    ok, encoded = cv2.imencode(".png", bgr)
    assert ok
    encoded.tofile(path)
    rgb = load_image(path)
    assert rgb.shape == (3, 5, 3)
    assert tuple(rgb[1, 1]) == RED_RGB


def test_non_ascii_missing_file_message(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="Zoë.jpg': file not found"):
        load_image(tmp_path / "Zoë.jpg")


def test_large_10000x10000_image_loads(tmp_path: Path) -> None:
    assert MAX_IMAGE_PIXELS >= 10_000 * 10_000
    path = _write(tmp_path / "big.png", np.zeros((10_000, 10_000), np.uint8))
    rgb = load_image(path)
    assert rgb.shape == (10_000, 10_000, 3) and rgb.dtype == np.uint8


def test_image_over_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "wide.png", np.zeros((10, 30), np.uint8))
    monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", 299)
    with pytest.raises(ImageError, match=r"wide\.png': image is 30x10 = 300 pixels, more than the limit .*MAX_IMAGE"):
        load_image(path)
    monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", 300)
    assert load_image(path).shape == (10, 30, 3)


# --- to_rgb -----------------------------------------------------------------------------------------------------------


def test_bgr_array_with_bgr_flag() -> None:
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., :] = (10, 20, 30)
    rgb = to_rgb(bgr, bgr=True)
    assert rgb.shape == (4, 5, 3)
    assert tuple(rgb[0, 0]) == (30, 20, 10)
    assert tuple(bgr[0, 0]) == (10, 20, 30)  # input untouched


def test_rgb_array_is_copied_not_shared() -> None:
    rgb_in = np.random.default_rng(2).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    rgb = to_rgb(rgb_in)
    np.testing.assert_array_equal(rgb, rgb_in)
    assert not np.shares_memory(rgb, rgb_in)
    rgb[:] = 0
    assert rgb_in.any()


def test_non_contiguous_and_read_only_input() -> None:
    base = np.random.default_rng(3).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    view = base[::2, ::3]
    view.flags.writeable = False
    rgb = to_rgb(view, bgr=True)
    assert rgb.flags.c_contiguous and rgb.flags.writeable
    np.testing.assert_array_equal(rgb, view[..., ::-1])


@pytest.mark.parametrize("bgr", [False, True])
def test_four_channel_arrays_drop_alpha(bgr: bool) -> None:
    four = np.zeros((2, 2, 4), np.uint8)
    four[..., :3] = RED_BGR if bgr else RED_RGB
    four[..., 3] = 7
    rgb = to_rgb(four, bgr=bgr)
    assert rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 0]) == RED_RGB


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 1)])
def test_grayscale_arrays(shape: tuple[int, ...]) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(shape)
    rgb = to_rgb(gray, bgr=True)
    assert rgb.shape == (3, 4, 3)
    np.testing.assert_array_equal(rgb[..., 1], gray.reshape(3, 4))


def test_uint16_array() -> None:
    assert tuple(to_rgb(np.full((1, 1, 3), 0xABCD, np.uint16))[0, 0]) == (0xAB,) * 3


def test_float_0_to_1() -> None:
    image = np.array([[[0.0, 0.5, 1.0]]], np.float32)
    assert tuple(to_rgb(image)[0, 0]) == (0, 128, 255)


def test_float_0_to_255() -> None:
    image = np.array([[[0.0, 127.6, 255.0]]], np.float64)
    assert tuple(to_rgb(image)[0, 0]) == (0, 128, 255)


def test_float_input_not_modified() -> None:
    image = np.full((2, 2, 3), 0.25, np.float32)
    to_rgb(image)
    assert (image == 0.25).all()


@pytest.mark.parametrize("value", [-0.1, 256.0])
def test_float_out_of_range(value: float) -> None:
    with pytest.raises(ImageError, match="float image values must lie in 0..1 or 0..255"):
        to_rgb(np.full((2, 2, 3), value, np.float32))


def test_float_nan() -> None:
    image = np.zeros((2, 2, 3), np.float32)
    image[0, 0, 0] = np.nan
    with pytest.raises(ImageError, match="NaN or infinite"):
        to_rgb(image)


@pytest.mark.parametrize("shape", [(0, 10, 3), (10, 0, 3), (0, 0)])
def test_zero_size_array(shape: tuple[int, ...]) -> None:
    with pytest.raises(ImageError, match="image has zero size"):
        to_rgb(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4, 3), (4, 4, 2), (4, 4, 5)])
def test_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ImageError, match=rf"must be HxW, HxWx1, HxWx3 or HxWx4 uint8.*got shape \({shape[0]},"):
        to_rgb(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.int32, np.uint32, np.complex64, object])
def test_unsupported_dtype(dtype: type) -> None:
    with pytest.raises(ImageError, match=r"got shape \(4, 4, 3\) dtype "):
        to_rgb(np.zeros((4, 4, 3), dtype))


def test_bool_dtype_message() -> None:
    with pytest.raises(ImageError, match="dtype bool"):
        to_rgb(np.ones((4, 4), bool))


def test_not_an_array() -> None:
    with pytest.raises(ImageError, match="must be a numpy array, got list"):
        to_rgb([[0, 0, 0]])  # type: ignore[arg-type]


def test_image_error_is_value_error() -> None:
    assert issubclass(ImageError, ValueError)


# --- save_image -------------------------------------------------------------------------------------------------------


def test_save_png_round_trip_creates_parents(tmp_path: Path) -> None:
    rgb = np.random.default_rng(4).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    rgb[0, 0] = RED_RGB
    path = tmp_path / "a" / "b" / "out.png"
    save_image(path, rgb)
    np.testing.assert_array_equal(load_image(path), rgb)
    assert tuple(cv2.imread(str(path))[0, 0]) == RED_BGR  # stored in the usual order for other tools


def test_save_jpeg_non_ascii(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:] = RED_RGB
    path = tmp_path / "Gäste" / "Zoë.JPG"
    save_image(str(path), rgb)
    loaded = load_image(path)
    assert loaded.shape == (16, 16, 3)
    assert loaded[..., 0].min() > 240 and loaded[..., 1:].max() < 15


def test_save_grayscale_array(tmp_path: Path) -> None:
    save_image(tmp_path / "g.png", np.full((3, 3), 9, np.uint8))
    assert (load_image(tmp_path / "g.png") == 9).all()


@pytest.mark.parametrize("name", ["out.xyz", "out", "out.txt"])
def test_save_unsupported_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / "sub" / name
    with pytest.raises(ImageError, match=r"cannot save image '.*': unsupported file extension .*use \.jpg or \.png"):
        save_image(path, np.zeros((2, 2, 3), np.uint8))
    assert not path.parent.exists()


def test_save_invalid_array(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"cannot save image '.*bad\.png': image has zero size"):
        save_image(tmp_path / "bad.png", np.zeros((0, 4, 3), np.uint8))
    assert not (tmp_path / "bad.png").exists()


# --- size from the header, before decoding --------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tif", ".ppm", ".pgm"])
def test_the_header_states_the_size_of_every_format_read(tmp_path: Path, ext: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    if ext == ".pgm":
        image = image[..., 0]
    path = _write(tmp_path / f"odd{ext}", image)
    assert image_io.image_size(path.read_bytes()) == (53, 37)


def test_the_header_of_a_jpeg_with_exif_and_of_a_lossless_webp(tmp_path: Path) -> None:
    image = np.zeros((40, 70, 3), np.uint8)
    assert image_io.image_size(_jpeg_with_orientation(image, 6)) == (70, 40)  # stored size; rotation keeps the count
    ok, lossless = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok and lossless.tobytes()[12:16] == b"VP8L" and image_io.image_size(lossless.tobytes()) == (70, 40)
    assert image_io.image_size(b"\x89PNG\r\n\x1a\n") is None  # cut short
    assert image_io.image_size(b"GIF89a" + struct.pack("<HH", 640, 480)) == (640, 480)


def _black_png(width: int, height: int) -> bytes:
    """A complete, valid RGB PNG of that size: all black, so a few megabytes however large it decodes."""
    packer = zlib.compressobj(1)
    row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
    pixels = b"".join([*(packer.compress(row) for _ in range(height)), packer.flush()])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", pixels)
            + _png_chunk(b"IEND", b""))


def test_a_huge_png_is_refused_from_its_header_without_the_memory_its_pixels_would_take(tmp_path: Path) -> None:
    """20000×20000 took 2.4 GB before it was refused; now `doorface detect` refuses it within a small footprint."""
    import subprocess
    import sys

    huge = tmp_path / "huge.png"
    huge.write_bytes(_black_png(20000, 20000))  # 1.2 GB of pixels decoded, 5 MB on disk
    with pytest.raises(ImageError, match=r"huge\.png': image is 20000x20000 = 400,000,000 pixels.*before decoding"):
        load_image(huge)
    # VmHWM (peak RSS of this process image; ru_maxrss would carry over pytest's own peak through fork and exec).
    script = ("import sys\nfrom edge.cli import main\ncode = main(['detect', sys.argv[1]])\n"
              "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
              "sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, str(huge)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "20000x20000" in result.stderr
    peak_mb = int(result.stdout.strip().splitlines()[-1]) / 1024
    assert peak_mb < 600, f"peak RSS {peak_mb:.0f} MB: the pixels were allocated"
