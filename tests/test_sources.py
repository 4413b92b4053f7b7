"""Tests for edge.sources: the shared videos and photos, files in tmp_path, a real MJPEG server over HTTP, and a
stand-in for picamera2 (which needs a Pi and libcamera)."""

from __future__ import annotations

import http.server
import importlib
import logging
import shutil
import socket
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np
import pytest

from edge.image_io import load_image
from edge.sources import (
    Frame,
    FrameSource,
    ImageFolderSource,
    OpenCVCameraSource,
    PiCamera2Source,
    SourceError,
    VideoFileSource,
    open_source,
    redact_url,
)

HAMILTON = "video/short_hamilton_clip.mp4"  # 640x360, 29.97 fps, 275 frames
FACENET = "video/facenet_pytorch_video.mp4"  # 1920x1080, 25 fps, 105 frames
LOGGER = "edge.sources"


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# -- video files ---------------------------------------------------------------------------------------------------


def test_video_file_delivers_every_frame_in_rgb_with_position_timestamps(shared_data: Path) -> None:
    path = shared_data / HAMILTON
    reference = cv2.VideoCapture(str(path))
    source = open_source(str(path))
    assert isinstance(source, VideoFileSource) and not source.live
    before = time.time()
    with source:
        assert not source.ended
        stamps = []
        for frame in source.frames():
            ok, bgr = reference.read()
            assert ok, "the source gave more frames than OpenCV decodes"
            assert frame.image.shape == (360, 640, 3) and frame.image.dtype == np.uint8
            assert frame.index == len(stamps)
            assert frame.source == str(path)
            if frame.index % 25 == 0:  # RGB, not OpenCV's BGR
                np.testing.assert_array_equal(frame.image, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            stamps.append(frame.timestamp)
        assert not reference.read()[0]
        assert source.ended
        assert source.read() is None  # stays ended
        assert source.stats == {"frames_read": 275, "frames_dropped": 0, "bad_frames": 0, "reconnects": 0,
                                "connected": False}
    reference.release()

    assert len(stamps) == 275
    assert before <= stamps[0] <= time.time()
    steps = np.diff(stamps)
    assert (steps > 0).all()
    np.testing.assert_allclose(steps, 1 / 29.97, atol=1e-3)  # the pts step, not the decoding speed
    np.testing.assert_allclose(stamps[-1] - stamps[0], 274 / 29.97, atol=1e-3)

    with open_source(str(path)) as again:  # relative to the start, a second run gives the same timestamps
        again_stamps = [f.timestamp for f in again.frames()]
    np.testing.assert_allclose(np.subtract(again_stamps, again_stamps[0]), np.subtract(stamps, stamps[0]), atol=1e-6)


def test_video_file_is_scaled_down_to_fit_never_up(shared_data: Path) -> None:
    path = shared_data / FACENET
    reference = cv2.VideoCapture(str(path))
    ok, bgr = reference.read()
    reference.release()
    assert ok and bgr.shape == (1080, 1920, 3)

    with open_source(path) as source:  # a pathlib.Path works too
        first = source.read()
        count = 1 + sum(1 for _ in source.frames())
    assert count == 105
    assert first.image.shape == (360, 640, 3)
    expected = cv2.cvtColor(cv2.resize(bgr, (640, 360), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(first.image, expected)

    with open_source(path, width=300, height=300) as source:
        assert source.read().image.shape == (169, 300, 3)  # width limits: 1080 * 300 / 1920 = 168.75
    with open_source(path, width=4000, height=3000) as source:
        np.testing.assert_array_equal(source.read().image, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_lifecycle_guard_and_idempotent_close(shared_data: Path) -> None:
    source = open_source(shared_data / HAMILTON)
    with pytest.raises(RuntimeError, match="open"):
        source.read()
    source.close()  # before open: nothing to do
    source.open()
    with pytest.raises(RuntimeError, match="already open"):
        source.open()
    assert source.read().index == 0
    source.close()
    source.close()
    assert source.ended and source.read() is None
    with pytest.raises(RuntimeError, match="single-use"):
        source.open()
    with pytest.raises(RuntimeError, match="already open"), open_source(shared_data / HAMILTON) as other:
        other.open()
    assert other.ended  # the with block closed it despite the error


def test_file_opencv_cannot_decode_is_a_source_error(tmp_path: Path) -> None:
    bogus = tmp_path / "door.mp4"
    bogus.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    source = open_source(bogus)
    with pytest.raises(SourceError, match=r"cannot open video file .*door\.mp4.*ffmpeg"):
        source.open()
    assert not source.ended  # still new: a failed open leaves nothing to close
    source.close()


# -- image folders -------------------------------------------------------------------------------------------------


def test_image_folder_in_name_order_skipping_corrupt_images(tmp_path: Path, shared_data: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(shared_data / "video/obama.jpg", folder / "01_obama.jpg")
    (folder / "02_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)
    solid = np.zeros((50, 100, 3), np.uint8)
    solid[:] = (30, 200, 10)  # BGR as written by OpenCV, so RGB (10, 200, 30)
    assert cv2.imwrite(str(folder / "03_solid.png"), solid)
    big = np.random.default_rng(1).integers(0, 256, (960, 1280, 3), dtype=np.uint8)
    assert cv2.imwrite(str(folder / "04_big.bmp"), big)
    shutil.copy(shared_data / "video/obama_small.jpg", folder / "05_SMALL.JPG")  # extensions in any case
    assert cv2.imwrite(str(folder / "06_small.webp"), solid[:20, :20])
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.jpg").write_bytes(b"macOS resource fork")
    (folder / "sub").mkdir()
    assert cv2.imwrite(str(folder / "sub" / "00_nested.jpg"), solid)

    source = open_source(str(folder))
    assert isinstance(source, ImageFolderSource) and not source.live
    with source:
        frames = list(source.frames())
        assert source.ended
        stats = source.stats

    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    obama = load_image(shared_data / "video/obama.jpg")  # 910x1137: the height limits
    assert obama.shape == (1137, 910, 3)
    np.testing.assert_array_equal(frames[0].image, cv2.resize(obama, (384, 480), interpolation=cv2.INTER_AREA))
    assert frames[1].image.shape == (50, 100, 3) and (frames[1].image == (10, 200, 30)).all()
    assert frames[2].image.shape == (480, 640, 3)  # 1280x960 scaled down to fit
    np.testing.assert_array_equal(frames[3].image, load_image(shared_data / "video/obama_small.jpg"))  # 320x240
    assert frames[4].image.shape[:2] == (20, 20)  # small images are not scaled up
    # Timestamps follow the position in the sorted list (the broken image keeps its place), 1 s apart.
    np.testing.assert_allclose([f.timestamp - frames[0].timestamp for f in frames], [0, 2, 3, 4, 5], atol=1e-6)
    assert stats["frames_read"] == 5 and stats["bad_frames"] == 1

    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "02_broken.jpg" in warnings[0]


def test_empty_folder_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    source = open_source(tmp_path)
    assert isinstance(source, ImageFolderSource)
    with pytest.raises(SourceError, match="holds no images"):
        source.open()


def test_missing_path_is_a_source_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "clip.mp4"
    with pytest.raises(SourceError, match=r"no such file or folder.*picamera2"):
        open_source(str(missing))


# -- spec parsing --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "kind", "name"), [
    ("picamera2", PiCamera2Source, "picamera2:0"),
    ("picamera2:1", PiCamera2Source, "picamera2:1"),
    ("0", OpenCVCameraSource, "device 0"),
    (" 2 ", OpenCVCameraSource, "device 2"),
    ("rtsp://192.168.1.20:554/stream1", OpenCVCameraSource, "rtsp://192.168.1.20:554/stream1"),
    ("rtsps://cam.local/live", OpenCVCameraSource, "rtsps://cam.local/live"),
    ("http://cam.local/mjpg/video.mjpg", OpenCVCameraSource, "http://cam.local/mjpg/video.mjpg"),
    ("HTTPS://cam.local/video", OpenCVCameraSource, "https://cam.local/video"),
])
def test_live_specs(spec: str, kind: type, name: str) -> None:
    source = open_source(spec)
    assert type(source) is kind and source.live and source.name == name
    assert not source.ended


@pytest.mark.parametrize("spec", [
    "rtsp://user:secret@host/x",
    "rtsp://admin:secret@192.168.1.20:554/Streaming/Channels/101",
    "http://viewer:s3cret:secret@cam.local/video.cgi",
    "http://cam.local/videostream.cgi?user=admin&pwd=secret&resolution=32",
    "https://cam.local/api/stream?access_token=secret",
])
def test_urls_never_show_the_password(spec: str) -> None:
    source = open_source(spec)
    assert "secret" not in source.name and "secret" not in repr(source)
    assert "secret" not in redact_url(spec)
    assert source.name.split("://")[0] == spec.split("://")[0]
    assert "cam.local" in source.name or "host" in source.name or "192.168.1.20" in source.name


def test_file_specs(tmp_path: Path, shared_data: Path) -> None:
    assert type(open_source(shared_data / "video")) is ImageFolderSource
    assert type(open_source(str(shared_data / HAMILTON))) is VideoFileSource


@pytest.mark.parametrize(("spec", "match"), [
    ("", "empty"),
    ("   ", "empty"),
    ("picamera2:left", "camera number"),
    ("-1", "no such file or folder"),
    ("rtmp://cam.local/live", "unsupported URL scheme 'rtmp'"),
    ("udp://user:secret@239.0.0.1:1234", "unsupported URL scheme"),
    ("camera.mp4", "picamera2.*device index.*rtsp://.*folder of images"),
])
def test_bad_specs_say_what_is_accepted(spec: str, match: str) -> None:
    with pytest.raises(SourceError, match=match) as info:
        open_source(spec)
    assert "secret" not in str(info.value)


def test_bad_sizes_are_value_errors() -> None:
    with pytest.raises(ValueError, match="width"):
        open_source("0", width=0)
    with pytest.raises(ValueError, match="height"):
        open_source("0", height=-5)
    with pytest.raises(ValueError, match="reconnect_max_delay"):
        open_source("0", reconnect_max_delay=0)


def test_picamera2_missing_says_how_to_install_it() -> None:
    try:
        importlib.import_module("picamera2")
    except ImportError:
        pass
    else:
        pytest.skip("picamera2 is installed here; this checks the message when it is not")
    source = open_source("picamera2")
    with pytest.raises(SourceError) as info:
        source.open()
    message = str(info.value)
    assert "sudo apt install python3-picamera2" in message
    assert "--system-site-packages" in message and "install.sh" in message
    assert not source.ended
    source.close()


def test_frame_is_a_frozen_value() -> None:
    frame = Frame(image=np.zeros((2, 2, 3), np.uint8), index=0, timestamp=1.5, source="test")
    with pytest.raises(AttributeError):
        frame.index = 1  # type: ignore[misc]
    assert frame == frame and frame != Frame(frame.image, 0, 1.5, "test")  # identity: never compares pixels
    assert isinstance(open_source("0"), FrameSource)


# -- live sources --------------------------------------------------------------------------------------------------


class MjpegServer:
    """A real MJPEG-over-HTTP camera (multipart/x-mixed-replace, as ESP32-CAM and mjpg-streamer serve it)."""

    def __init__(self, jpegs: list[bytes], port: int = 0, fps: float = 30.0) -> None:
        self.jpegs = jpegs
        self.period = 1.0 / fps
        self.stopping = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=doorfaceframe")
                self.end_headers()
                i = 0
                try:
                    while not server.stopping.is_set():
                        jpeg = server.jpegs[i % len(server.jpegs)]
                        i += 1
                        self.wfile.write(b"--doorfaceframe\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg))
                        server.stopping.wait(server.period)
                except OSError:  # the client hung up
                    pass

            def log_message(self, *args: object) -> None:
                pass

        deadline = time.monotonic() + 5.0
        while True:  # the port was ours a moment ago, but give the kernel a moment should it be busy
            try:
                self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Drop every client and stop listening, like a camera that loses power."""
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def served_frames(shared_data: Path) -> tuple[list[bytes], list[np.ndarray]]:
    """JPEGs of 20 real video frames, and each as OpenCV decodes it (RGB)."""
    capture = cv2.VideoCapture(str(shared_data / HAMILTON))
    jpegs = []
    for _ in range(20):
        ok, bgr = capture.read()
        assert ok
        jpegs.append(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    capture.release()
    decoded = [cv2.cvtColor(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
               for j in jpegs]
    return jpegs, decoded


def _closest(image: np.ndarray, candidates: list[np.ndarray]) -> float:
    return min(float(np.abs(image.astype(np.int16) - c).mean()) for c in candidates)


def test_live_http_camera_drops_stale_frames_survives_a_loss_and_reconnects(
        served_frames: tuple[list[bytes], list[np.ndarray]], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    jpegs, decoded = served_frames
    server: Optional[MjpegServer] = MjpegServer(jpegs)
    port = server.port
    source = open_source(f"http://viewer:secret@127.0.0.1:{port}/stream.mjpg", reconnect_max_delay=0.2)
    assert isinstance(source, OpenCVCameraSource) and source.live
    try:
        started = time.time()
        source.open()
        first = source.read(timeout=10)
        assert first is not None, "no frame from the MJPEG server"
        assert first.index == 0 and first.image.shape == (360, 640, 3) and first.image.dtype == np.uint8
        assert started <= first.timestamp <= time.time()
        # RGB: the frame is one of the served frames, and clearly not with red and blue swapped.
        assert _closest(first.image, decoded) < 2.0
        assert _closest(first.image[..., ::-1], decoded) > 5.0

        # A consumer that falls behind gets the newest frame, not a backlog.
        time.sleep(0.5)
        fresh = source.read(timeout=2)
        assert fresh is not None and fresh.index == 1
        assert source.stats["frames_dropped"] >= 5
        assert time.time() - fresh.timestamp < 0.5

        stop = threading.Event()
        got = []
        for frame in source.frames(stop):
            got.append(frame)
            if len(got) == 3:
                stop.set()
        assert [f.index for f in got] == [2, 3, 4]
        assert all(b.timestamp > a.timestamp for a, b in zip(got, got[1:]))

        # The camera goes away: the source keeps running, says so, and keeps trying.
        server.stop()
        server = None
        assert _wait_until(lambda: any("lost" in m for m in _warnings(caplog)), 5), _warnings(caplog)
        assert _wait_until(lambda: source.stats["reconnects"] >= 3, 5), source.stats
        assert not source.ended and not source.stats["connected"]
        source.read(timeout=0.05)  # at most the last frame from before the loss is left
        assert source.read(timeout=0.3) is None
        lost = [m for m in _warnings(caplog) if "lost" in m]
        assert len(lost) == 1 and "reconnecting in 0.2 s" in lost[0]

        # It comes back on the same address: frames flow again without anyone reopening the source.
        server = MjpegServer(jpegs, port=port)
        back = time.time()
        frame = source.read(timeout=10)
        while frame is not None and frame.timestamp < back:
            frame = source.read(timeout=10)
        assert frame is not None, "no frame after the camera came back"
        assert _closest(frame.image, decoded) < 2.0
        assert _wait_until(lambda: any("reconnected" in m for m in _warnings(caplog)), 2)
        assert source.stats["connected"]
    finally:
        closing = time.monotonic()
        source.close()
        assert time.monotonic() - closing < 2.5
        if server is not None:
            server.stop()
    assert source.ended and source.read(timeout=1) is None
    assert not any(t.name.startswith("doorface-capture") and t.is_alive() for t in threading.enumerate())
    assert all("secret" not in r.getMessage() for r in caplog.records)


def test_missing_device_is_retried_quietly_and_closes_promptly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    source = open_source("57", reconnect_max_delay=0.1)
    with source:
        assert source.read(timeout=0.5) is None
        assert not source.ended
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        assert list(source.frames(stop)) == []
        closing = time.monotonic()
    assert time.monotonic() - closing < 1.0
    assert source.ended
    assert source.stats["frames_read"] == 0 and source.stats["reconnects"] >= 1
    warnings = _warnings(caplog)
    assert warnings and all("device 57" in m for m in warnings)


def test_unreachable_url_never_logs_its_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open_source(f"rtsp://admin:secret@127.0.0.1:{port}/live", reconnect_max_delay=0.1) as source:
        assert source.read(timeout=0.5) is None
    assert _warnings(caplog)
    assert all("secret" not in r.getMessage() and "secret" not in r.threadName for r in caplog.records)


class StandInPicamera2:
    """Just enough of picamera2's Picamera2 to drive PiCamera2Source without a Pi: it serves real video frames in
    picamera2's RGB888 layout (B, G, R bytes) and times out like a stalled sensor after ``plan``'s frame counts."""

    frames: list[np.ndarray] = []
    plan: list[Optional[int]] = []
    opened: list[StandInPicamera2] = []

    def __init__(self, camera_num: int = 0) -> None:
        self.camera_num = camera_num
        self.left = self.plan.pop(0) if self.plan else None
        self.config: dict[str, Any] = {}
        self.started = self.closed = False
        self.served = 0
        self.opened.append(self)

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [{"Model": "imx708", "Num": 0}]

    def create_video_configuration(self, main: dict[str, Any]) -> dict[str, Any]:
        return {"main": dict(main)}

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def capture_array(self, name: str = "main", wait: Any = None) -> np.ndarray:
        assert name == "main" and isinstance(wait, float), "a stalled sensor must not block forever"
        time.sleep(0.01)
        if self.left is not None and self.served >= self.left:
            raise TimeoutError("Camera frontend has timed out!")
        frame = self.frames[self.served % len(self.frames)]
        self.served += 1
        return frame.copy()

    def close(self) -> None:
        self.closed = True


def test_picamera2_source_converts_bgr_and_reconnects_after_a_stall(
        shared_data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    capture = cv2.VideoCapture(str(shared_data / HAMILTON))
    bgr = [capture.read()[1] for _ in range(10)]
    capture.release()
    monkeypatch.setattr(StandInPicamera2, "frames", bgr)
    monkeypatch.setattr(StandInPicamera2, "plan", [5, None])  # first session stalls after 5 frames
    monkeypatch.setattr(StandInPicamera2, "opened", [])
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=StandInPicamera2))

    with open_source("picamera2", width=640, height=480, reconnect_max_delay=0.1) as source:
        frame = source.read(timeout=5)
        assert frame is not None and frame.source == "picamera2:0"
        rgb = [cv2.cvtColor(b, cv2.COLOR_BGR2RGB) for b in bgr]
        assert any(np.array_equal(frame.image, r) for r in rgb)
        assert _wait_until(lambda: len(StandInPicamera2.opened) >= 2 and StandInPicamera2.opened[1].served > 0, 5)
        later = source.read(timeout=5)
        assert later is not None and any(np.array_equal(later.image, r) for r in rgb)
        assert _wait_until(lambda: any("reconnected" in m for m in _warnings(caplog)), 2)
        assert source.stats["reconnects"] >= 1
    first, second = StandInPicamera2.opened[:2]
    assert first.config == {"main": {"size": (640, 480), "format": "RGB888"}} and first.started
    assert first.closed and second.closed
    lost = [m for m in _warnings(caplog) if "lost" in m]
    assert lost == ["camera picamera2:0 lost (TimeoutError: Camera frontend has timed out!); reconnecting in 0.1 s"]

    caplog.clear()
    with open_source("picamera2:3", reconnect_max_delay=0.1) as source:  # a camera libcamera does not see
        assert source.read(timeout=0.3) is None
    assert any("libcamera sees 1 camera(s)" in m for m in _warnings(caplog))
