"""Frame sources: cameras, streams, video files and image folders behind one interface.

:func:`open_source` turns a ``camera.source`` string into a :class:`FrameSource`; every source hands out
:class:`Frame` objects holding RGB ``uint8`` images scaled down to fit ``width`` x ``height``::

    with open_source("rtsp://user:pass@192.168.1.20/stream1") as camera:
        for frame in camera.frames(stop):
            ...

Two kinds of source behave differently on purpose:

* Live sources (Pi camera, OpenCV device index, rtsp/http URL) capture on their own daemon thread and keep only the
  newest frame, so a slow consumer sees fresh frames (older ones are dropped and counted) instead of a growing
  backlog. A camera that cannot be opened or stops delivering is reopened with exponential back-off until
  :meth:`FrameSource.close`; it never raises into the caller. ``read(timeout)`` returns None while no new frame came.
* File sources (video file, image folder) are read synchronously on the caller's thread: every frame, in order,
  with timestamps derived from the position in the file, so runs are reproducible.

Sources are single-use: ``open()`` once, ``close()`` (idempotent) when done, or use ``with``. Opening a source twice,
or again after closing it, raises RuntimeError, like picamera2's start guard.

RTSP note: OpenCV's FFmpeg backend negotiates the RTSP transport itself; if a camera only streams reliably over TCP,
set ``OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;tcp"`` in the service environment.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edge.image_io import IMAGE_EXTENSIONS, ImageError, load_image, to_rgb

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "URL_SCHEMES",
    "Frame",
    "FrameSource",
    "ImageFolderSource",
    "OpenCVCameraSource",
    "PiCamera2Source",
    "SourceError",
    "VideoFileSource",
    "open_source",
    "redact_url",
]

#: URL schemes handed to OpenCV's FFmpeg backend as live streams.
URL_SCHEMES = ("rtsp", "rtsps", "http", "https")

ACCEPTED_FORMS = (
    "'picamera2' or 'picamera2:N' (Raspberry Pi camera N), an OpenCV device index such as '0', "
    "an rtsp://, rtsps://, http:// or https:// URL, a video file, or a folder of images"
)

PICAMERA2_HINT = (
    "picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2` and create the venv "
    "with --system-site-packages (install.sh does)"
)

# First wait before reopening a failed live camera; doubled per failed attempt up to reconnect_max_delay.
_FIRST_RECONNECT_DELAY_S = 0.5
# FFmpeg's own open/read timeouts for URLs: without them an unreachable or silent camera blocks the capture thread
# for FFmpeg's default (30 s or forever), and close() would have to wait that long.
_NETWORK_TIMEOUT_S = 5.0
# picamera2 waits forever for a frame by default; a stalled sensor must turn into a reconnect instead.
_PICAMERA2_FRAME_TIMEOUT_S = 5.0
# How long close() waits for a capture thread stuck inside a driver call before leaving it to finish on its own.
_JOIN_TIMEOUT_S = 2.0
# A live camera that returns this many empty frames in a row is treated as lost rather than spun on forever.
_MAX_BAD_FRAMES_IN_A_ROW = 30
# How often frames() wakes from a live source's read to look at its stop event.
_POLL_S = 0.2
# Used when a video file does not state a usable frame rate.
_FALLBACK_FPS = 25.0

_NEW, _OPEN, _CLOSED = "new", "open", "closed"


class SourceError(RuntimeError):
    """A source that cannot be opened at all; the message says what to do about it."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing or hashing would touch the pixel array
class Frame:
    """One image from a source.

    ``image`` is RGB ``uint8`` (H, W, 3), scaled down (never up) to fit the source's width x height with the aspect
    kept. ``index`` counts the frames this source delivered, from 0. ``timestamp`` is unix seconds: the capture time
    for live sources; for files the open time plus the position in the file, so it is reproducible relative to the
    first frame. ``source`` describes the source (URLs without credentials).
    """

    image: np.ndarray
    index: int
    timestamp: float
    source: str


class FrameSource:
    """Base class of all sources: lifecycle, the frames() loop and the counters.

    Subclasses implement ``_start`` (called by :meth:`open`), ``_stop`` (called by :meth:`close`) and ``_read``.
    """

    live: bool = False

    def __init__(self, name: str, *, width: int = 640, height: int = 480) -> None:
        _check_size(width, height)
        self.name = name
        self.width = int(width)
        self.height = int(height)
        self._state = _NEW
        self._guard = threading.Lock()  # serialises open() and close()
        self._cond = threading.Condition()  # protects the counters (and the live slot)
        self._frames_read = 0
        self._frames_dropped = 0
        self._bad_frames = 0
        self._reconnects = 0
        self._delivered = 0
        self._connected = False

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Start the source. Raises SourceError when it cannot work at all, RuntimeError when opened before."""
        with self._guard:
            if self._state == _OPEN:
                raise RuntimeError(f"source {self.name} is already open")
            if self._state == _CLOSED:
                raise RuntimeError(f"source {self.name} was closed; sources are single-use, make a new one with "
                                   "open_source()")
            self._start()  # on SourceError the state stays new, so the caller may fix the cause and retry
            self._state = _OPEN
        log.debug("opened %s", self.name)

    def close(self) -> None:
        """Stop the source and release the camera or file. Safe to call more than once; no-op before open()."""
        with self._guard:
            if self._state != _OPEN:
                return
            with self._cond:
                self._state = _CLOSED
                self._cond.notify_all()  # wake a read() waiting on a live source
            self._stop()
        log.debug("closed %s", self.name)

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- frames ----------------------------------------------------------------------------------------------------

    def read(self, timeout: Optional[float] = None) -> Optional[Frame]:
        """The next frame, or None: a live source had no new frame within ``timeout`` seconds (None = wait until
        one comes or the source is closed), or the source has ended (see :attr:`ended`). File sources ignore
        ``timeout``. Raises RuntimeError before open()."""
        if self._state == _NEW:
            raise RuntimeError(f"source {self.name} is not open; call open() first or use `with open_source(...)`")
        if self._state == _CLOSED:
            return None
        return self._read(timeout)

    @property
    def ended(self) -> bool:
        """True when a file source is exhausted, or any source is closed. A live source never ends by itself."""
        return self._state == _CLOSED or (self._state == _OPEN and self._exhausted())

    def frames(self, stop: Optional[threading.Event] = None) -> Iterator[Frame]:
        """Yield frames until the source ends or ``stop`` is set (checked at least every 0.2 s for live sources)."""
        while not self.ended and not (stop is not None and stop.is_set()):
            frame = self.read(timeout=_POLL_S if self.live else None)
            if frame is not None:
                yield frame

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: ``frames_read`` (taken from the camera or file), ``frames_dropped`` (live: replaced by a newer
        frame before anyone read them), ``bad_frames`` (empty frames, unreadable images: skipped), ``reconnects``
        (live: attempts to reopen the camera after a failure) and ``connected`` (live: delivering now; files: open
        and not ended)."""
        with self._cond:
            connected = self._connected if self.live else self._state == _OPEN and not self._exhausted()
            return {
                "frames_read": self._frames_read,
                "frames_dropped": self._frames_dropped,
                "bad_frames": self._bad_frames,
                "reconnects": self._reconnects,
                "connected": connected,
            }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self._state}>"

    # -- for subclasses --------------------------------------------------------------------------------------------

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def _read(self, timeout: Optional[float]) -> Optional[Frame]:
        raise NotImplementedError

    def _exhausted(self) -> bool:
        return False

    def _make_frame(self, image: np.ndarray, timestamp: float) -> Frame:
        with self._cond:
            index = self._delivered
            self._delivered += 1
        return Frame(image=image, index=index, timestamp=timestamp, source=self.name)

    def _count_bad(self) -> None:
        with self._cond:
            self._bad_frames += 1


# ---------------------------------------------------------------------------------------------------------------
# File sources


class VideoFileSource(FrameSource):
    """Every frame of a video file, in order, decoded by OpenCV on the caller's thread."""

    def __init__(self, path: Union[str, os.PathLike[str]], *, width: int = 640, height: int = 480) -> None:
        super().__init__(os.fspath(path), width=width, height=height)
        self.path = os.fspath(path)
        self._io = threading.Lock()  # close() must not release the capture while read() is decoding from it
        self._cap: Optional[cv2.VideoCapture] = None
        self._done = False
        self._fps = _FALLBACK_FPS
        self._t0 = 0.0
        self._last_pos: Optional[float] = None

    def _start(self) -> None:
        if not os.path.isfile(self.path):
            raise SourceError(f"video file '{self.path}' not found; check camera.source")
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"cannot open video file '{self.path}': OpenCV cannot decode it (not a video, damaged, or a codec "
                "this OpenCV build lacks); check it with `ffprobe`, or convert it to H.264 MP4 with ffmpeg"
            )
        fps = cap.get(cv2.CAP_PROP_FPS)
        if math.isfinite(fps) and fps > 0:
            self._fps = fps
        else:
            log.debug("%s states no frame rate; assuming %.0f fps", self.path, _FALLBACK_FPS)
        self._cap = cap
        self._done = False
        self._last_pos = None
        self._t0 = time.time()

    def _stop(self) -> None:
        with self._io:
            self._release()

    def _exhausted(self) -> bool:
        return self._done

    def _read(self, timeout: Optional[float]) -> Optional[Frame]:
        with self._io:
            while self._cap is not None:
                ok, raw = self._cap.read()
                if not ok:
                    log.debug("%s ended after %d frames", self.path, self._frames_read)
                    self._done = True
                    self._release()
                    return None
                position = self._position()
                if not _usable_raw(raw):
                    log.warning("skipping an empty frame at %.3f s of %s", position, self.path)
                    self._count_bad()
                    continue
                try:
                    image = _bgr_to_fitted_rgb(raw, self.width, self.height)
                except ImageError as exc:
                    log.warning("skipping an unusable frame at %.3f s of %s: %s", position, self.path, exc)
                    self._count_bad()
                    continue
                with self._cond:
                    self._frames_read += 1
                return self._make_frame(image, self._t0 + position)
            return None

    def _position(self) -> float:
        """Seconds from the start of the video to the frame just read: its pts, or frame count / fps when the
        container gives no increasing pts."""
        pos = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if self._cap is not None else float("nan")
        last = self._last_pos
        if not math.isfinite(pos) or pos < 0 or (last is not None and pos <= last):
            pos = 0.0 if last is None else last + 1.0 / self._fps
        self._last_pos = pos
        return pos

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolderSource(FrameSource):
    """The images of a folder, sorted by file name, one frame each; unreadable images are skipped with a warning.

    Only files ending in one of :data:`IMAGE_EXTENSIONS` (any case) are read; hidden files (names starting with a
    dot, such as macOS ``._photo.jpg`` companions) and sub-folders are ignored. Names sort as text, so zero-pad
    numbers (``frame_0002.jpg``) for numeric order. The image at position ``i`` of the sorted list gets the timestamp
    open time + ``i * interval`` (1 s by default, so a tracker takes separate photos for separate moments).
    """

    def __init__(self, path: Union[str, os.PathLike[str]], *, width: int = 640, height: int = 480,
                 interval: float = 1.0) -> None:
        super().__init__(os.fspath(path), width=width, height=height)
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.path = os.fspath(path)
        self.interval = float(interval)
        self._io = threading.Lock()
        self._files: list[str] = []
        self._next = 0
        self._t0 = 0.0

    def _start(self) -> None:
        try:
            with os.scandir(self.path) as entries:
                names = sorted(e.name for e in entries
                               if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
                               and e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            raise SourceError(f"image folder '{self.path}' not found; check camera.source") from None
        except OSError as exc:
            raise SourceError(f"cannot list image folder '{self.path}' ({exc.strerror or exc}); check its "
                              "permissions") from None
        if not names:
            raise SourceError(f"image folder '{self.path}' holds no images ({', '.join(IMAGE_EXTENSIONS)}); copy "
                              "some into it or point camera.source at another folder")
        self._files = [os.path.join(self.path, name) for name in names]
        self._next = 0
        self._t0 = time.time()
        log.debug("%s: %d images", self.path, len(names))

    def _stop(self) -> None:
        with self._io:
            self._next = len(self._files)

    def _exhausted(self) -> bool:
        return self._next >= len(self._files)

    def _read(self, timeout: Optional[float]) -> Optional[Frame]:
        with self._io:
            while self._next < len(self._files):
                position = self._next
                self._next += 1
                try:
                    image = _fit(load_image(self._files[position]), self.width, self.height)
                except ImageError as exc:
                    log.warning("image folder: %s (skipped)", exc)
                    self._count_bad()
                    continue
                with self._cond:
                    self._frames_read += 1
                return self._make_frame(image, self._t0 + position * self.interval)
            if self._delivered == 0:
                log.warning("image folder '%s': none of its %d images could be read", self.path, len(self._files))
            return None


# ---------------------------------------------------------------------------------------------------------------
# Live sources


class _CameraUnavailable(Exception):
    """Raised inside the capture thread when a camera cannot be opened; the message is the reason."""


class _LiveSource(FrameSource):
    """A camera captured on a daemon thread into a one-slot buffer, reopened with back-off when it fails.

    Subclasses implement ``_connect`` (returns a handle or raises), ``_grab`` (the next raw BGR frame, or None
    when the camera failed) and ``_disconnect``; all three run on the capture thread only, so a handle is never
    used from two threads.
    """

    live = True

    def __init__(self, name: str, *, width: int = 640, height: int = 480,
                 reconnect_max_delay: float = 30.0) -> None:
        super().__init__(name, width=width, height=height)
        if not (math.isfinite(reconnect_max_delay) and reconnect_max_delay > 0):
            raise ValueError(f"reconnect_max_delay must be a positive number of seconds, got {reconnect_max_delay!r}")
        self.reconnect_max_delay = float(reconnect_max_delay)
        self._slot: Optional[tuple[np.ndarray, float]] = None
        self._halt = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _start(self) -> None:
        self._halt.clear()
        self._thread = threading.Thread(target=self._run, name=f"doorface-capture {self.name}", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        self._halt.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(_JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.warning("camera %s: the capture thread is still inside a driver call after %.0f s; it releases "
                            "the camera when that call returns", self.name, _JOIN_TIMEOUT_S)
        with self._cond:
            self._slot = None
            self._connected = False

    def _read(self, timeout: Optional[float]) -> Optional[Frame]:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            with self._cond:
                while self._slot is None and self._state == _OPEN:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._cond.wait(remaining)
                if self._slot is None:  # closed while waiting
                    return None
                raw, timestamp = self._slot
                self._slot = None
            # Converted here, not on the capture thread, so frames that get dropped never cost a resize.
            try:
                image = _bgr_to_fitted_rgb(raw, self.width, self.height)
            except ImageError as exc:
                # Once at warning level: a camera in an odd pixel format would otherwise log every frame.
                log.log(logging.DEBUG if self._bad_frames else logging.WARNING,
                        "camera %s: skipping an unusable frame: %s", self.name, exc)
                self._count_bad()
                continue
            return self._make_frame(image, timestamp)

    # -- capture thread --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._capture_loop()
        except Exception:  # escaping the thread it would reach only stderr, not the service log
            log.exception("camera %s: capture thread failed; no more frames will come from it", self.name)

    def _capture_loop(self) -> None:
        first_delay = min(_FIRST_RECONNECT_DELAY_S, self.reconnect_max_delay)
        delay = first_delay
        attempt = 0
        lost = False  # a connection delivered frames and then failed: the next frame is a reconnection
        while not self._halt.is_set():
            if attempt:
                with self._cond:
                    self._reconnects += 1
            attempt += 1
            handle = None
            delivered = 0
            try:
                handle = self._connect()
                reason, delivered = self._pump(handle, lost)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, _CameraUnavailable) else _describe(exc)
            finally:
                with self._cond:
                    self._connected = False
                if handle is not None:
                    self._disconnect_quietly(handle)
            if self._halt.is_set():
                break
            if delivered:
                lost, delay = True, first_delay  # the back-off restarts after a good frame
                log.warning("camera %s lost (%s); reconnecting in %.1f s", self.name, reason, delay)
            elif lost:
                log.warning("camera %s still unavailable (%s); retrying in %.1f s", self.name, reason, delay)
            else:
                log.warning("camera %s unavailable (%s); retrying in %.1f s", self.name, reason, delay)
            self._halt.wait(delay)
            delay = min(delay * 2.0, self.reconnect_max_delay)

    def _pump(self, handle: Any, after_loss: bool) -> tuple[str, int]:
        """Grab frames into the slot until the camera fails or close(); returns (why it stopped, frames delivered)."""
        delivered = 0
        bad_in_a_row = 0
        while not self._halt.is_set():
            try:
                raw = self._grab(handle)
            except Exception as exc:  # caught here, not by the caller, so the frames delivered so far are known
                return _describe(exc), delivered
            now = time.time()
            if raw is None:
                return "read failed", delivered
            if not _usable_raw(raw):
                self._count_bad()
                bad_in_a_row += 1
                if bad_in_a_row >= _MAX_BAD_FRAMES_IN_A_ROW:
                    return f"{bad_in_a_row} empty frames in a row", delivered
                continue
            bad_in_a_row = 0
            with self._cond:
                if self._state == _CLOSED:  # not "!= _OPEN": open() marks the source open after starting us
                    return "closed", delivered
                if self._slot is not None:
                    self._frames_dropped += 1
                self._slot = (raw, now)
                self._frames_read += 1
                self._connected = True
                self._cond.notify_all()
            if not delivered:
                height, width = raw.shape[:2]
                if after_loss:
                    # Logged at warning level like the loss, so a log filtered to warnings shows the outage's end.
                    log.warning("camera %s reconnected (%dx%d)", self.name, width, height)
                else:
                    log.info("camera %s streaming (%dx%d)", self.name, width, height)
            delivered += 1
        return "closed", delivered

    def _disconnect_quietly(self, handle: Any) -> None:
        try:
            self._disconnect(handle)
        except Exception as exc:  # a broken camera may fail to close too; the next attempt opens a new handle
            log.debug("camera %s: error while releasing it: %s", self.name, _describe(exc))

    def _connect(self) -> Any:
        raise NotImplementedError

    def _grab(self, handle: Any) -> Optional[np.ndarray]:
        raise NotImplementedError

    def _disconnect(self, handle: Any) -> None:
        raise NotImplementedError


class OpenCVCameraSource(_LiveSource):
    """A V4L2/USB camera by OpenCV device index, or a network stream (rtsp, rtsps, http, https) via FFmpeg."""

    def __init__(self, target: Union[int, str], *, width: int = 640, height: int = 480,
                 reconnect_max_delay: float = 30.0) -> None:
        if isinstance(target, bool) or not isinstance(target, (int, str)):
            raise TypeError(f"target must be a device index or a URL, got {type(target).__name__}")
        if isinstance(target, int) and target < 0:
            raise ValueError(f"device index must be >= 0, got {target}")
        name = f"device {target}" if isinstance(target, int) else redact_url(target)
        super().__init__(name, width=width, height=height, reconnect_max_delay=reconnect_max_delay)
        self._target = target

    def _start(self) -> None:
        if isinstance(self._target, str) and not _has_ffmpeg():
            raise SourceError(f"this OpenCV build ({cv2.__version__}) has no FFmpeg backend, so it cannot read "
                              f"{self.name}; install opencv-python-headless from PyPI or python3-opencv from apt")
        super()._start()

    def _connect(self) -> cv2.VideoCapture:
        if isinstance(self._target, int):
            cap = cv2.VideoCapture(self._target)
            hint = "is it plugged in? `ls /dev/video*` lists the devices"
            if cap.isOpened():
                # Ask for the wanted size (the camera picks its nearest mode) and a single driver buffer, so the
                # frame we grab is the newest one, not one that waited in the driver queue.
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        else:
            cap = _open_url(self._target)
            hint = "check the address, the credentials and that the camera is on the network"
        if not cap.isOpened():
            cap.release()
            raise _CameraUnavailable(f"OpenCV cannot open it; {hint}")
        return cap

    def _grab(self, handle: cv2.VideoCapture) -> Optional[np.ndarray]:
        ok, raw = handle.read()
        return raw if ok else None

    def _disconnect(self, handle: cv2.VideoCapture) -> None:
        handle.release()


class PiCamera2Source(_LiveSource):
    """A Raspberry Pi camera (libcamera) through picamera2, captured as RGB888 at width x height."""

    def __init__(self, camera: int = 0, *, width: int = 640, height: int = 480,
                 reconnect_max_delay: float = 30.0) -> None:
        if isinstance(camera, bool) or not isinstance(camera, int) or camera < 0:
            raise ValueError(f"camera must be a camera number >= 0, got {camera!r}")
        super().__init__(f"picamera2:{camera}", width=width, height=height, reconnect_max_delay=reconnect_max_delay)
        self.camera = camera
        self._picamera2: Any = None

    def _start(self) -> None:
        # Imported here, not at module level: picamera2 exists only on Raspberry Pi OS, and importing it pulls in
        # libcamera, which nothing else needs.
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError(f"{PICAMERA2_HINT} (import failed: {exc})") from None
        except Exception as exc:  # installed but broken, e.g. a libcamera that does not match it
            raise SourceError(f"picamera2 is installed but fails to import ({_describe(exc)}); reinstall it with "
                              "`sudo apt install --reinstall python3-picamera2 python3-libcamera`") from None
        self._picamera2 = Picamera2
        super()._start()

    def _connect(self) -> Any:
        cameras = self._picamera2.global_camera_info()
        if self.camera >= len(cameras):
            raise _CameraUnavailable(
                f"libcamera sees {len(cameras)} camera(s); check the ribbon cable and `rpicam-hello --list-cameras`"
            )
        cam = self._picamera2(self.camera)
        try:
            # picamera2's "RGB888" is B, G, R in memory (libcamera names formats by the 32-bit word's layout), the
            # OpenCV order, so it goes through the same BGR conversion as OpenCV frames.
            config = cam.create_video_configuration(main={"size": (self.width, self.height), "format": "RGB888"})
            cam.configure(config)
            cam.start()
        except Exception:
            cam.close()
            raise
        return cam

    def _grab(self, handle: Any) -> Optional[np.ndarray]:
        # A number as wait makes recent picamera2 raise TimeoutError instead of blocking forever on a stalled
        # sensor; older releases take it as "wait" and block as before.
        return handle.capture_array("main", wait=_PICAMERA2_FRAME_TIMEOUT_S)

    def _disconnect(self, handle: Any) -> None:
        handle.close()


# ---------------------------------------------------------------------------------------------------------------
# Spec parsing


def open_source(spec: Union[str, int, os.PathLike[str]], *, width: int = 640, height: int = 480,
                reconnect_max_delay: float = 30.0) -> FrameSource:
    """The source a ``camera.source`` string names, not yet opened: use ``with open_source(spec) as source:``.

    Accepted forms, tried in this order:

    * ``picamera2`` or ``picamera2:N``: Raspberry Pi camera N (0 by default), via picamera2.
    * a non-negative integer (``0``): an OpenCV device index (``/dev/video0``). Write ``./0`` for a file named 0.
    * an ``rtsp://``, ``rtsps://``, ``http://`` or ``https://`` URL: a network stream (MJPEG, H.264, ...).
    * an existing folder: its images (see :class:`ImageFolderSource`).
    * an existing file: a video file, every frame in order.

    Frames are scaled down to fit ``width`` x ``height``; live cameras are also asked for that size.
    ``reconnect_max_delay`` caps the wait between attempts to reopen a failed live camera.

    Raises:
        SourceError: the spec is none of the above (for example a path that does not exist).
        ValueError: width, height or reconnect_max_delay is not positive.
    The source's own open() raises SourceError for what only shows when opening (an empty folder, a file OpenCV
    cannot decode, picamera2 not installed); an unreachable live camera does not raise but is retried.
    """
    _check_size(width, height)
    if not (isinstance(reconnect_max_delay, (int, float)) and math.isfinite(reconnect_max_delay)
            and reconnect_max_delay > 0):
        raise ValueError(f"reconnect_max_delay must be a positive number of seconds, got {reconnect_max_delay!r}")
    if isinstance(spec, bool):
        raise SourceError(f"camera source {spec!r} not understood; expected {ACCEPTED_FORMS}")
    text = str(spec) if isinstance(spec, int) else os.fspath(spec)
    text = text.strip()
    live = {"width": width, "height": height, "reconnect_max_delay": reconnect_max_delay}
    if not text:
        raise SourceError(f"camera source is empty; expected {ACCEPTED_FORMS}")

    picam = re.fullmatch(r"picamera2(?::([0-9]+))?", text, flags=re.IGNORECASE)
    if picam:
        return PiCamera2Source(int(picam.group(1) or 0), **live)
    if text.lower().startswith("picamera2:"):
        raise SourceError(f"camera source {text!r}: the camera number after 'picamera2:' must be 0, 1, ...")
    if re.fullmatch(r"[0-9]+", text):
        return OpenCVCameraSource(int(text), **live)

    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme:
        if scheme.group(1).lower() in URL_SCHEMES:
            return OpenCVCameraSource(text, **live)
        raise SourceError(f"camera source {redact_url(text)}: unsupported URL scheme '{scheme.group(1)}'; use one "
                          f"of {', '.join(s + '://' for s in URL_SCHEMES)} (or re-stream the camera as RTSP)")

    path = Path(os.path.expanduser(text))
    if path.is_dir():
        return ImageFolderSource(path, width=width, height=height)
    if path.is_file():
        return VideoFileSource(path, width=width, height=height)
    if path.exists():
        raise SourceError(f"camera source '{text}' is neither a regular file nor a folder")
    raise SourceError(f"camera source '{text}' not understood: no such file or folder (relative paths start at "
                      f"{os.getcwd()}); expected {ACCEPTED_FORMS}")


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` and password-like query values (password, pwd, token, key, ...)
    replaced by ``***``, for logs and frame descriptions."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        query = re.sub(r"(?i)((?:^|&)[^=&]*(?:pass|pwd|token|secret|key|auth|sig|cred)[^=&]*=)[^&]*", r"\1***",
                       parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # malformed (bad port, unbalanced brackets): redact by pattern instead
        return re.sub(r"//[^/?#]*@", "//***@", url)


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _check_size(width: int, height: int) -> None:
    for label, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer number of pixels, got {value!r}")


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled down with INTER_AREA to fit width x height, aspect kept; returned as is when it fits."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    if scale >= 1.0:
        return image
    size = (max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _bgr_to_fitted_rgb(raw: np.ndarray, width: int, height: int) -> np.ndarray:
    # Resized before the colour conversion so the conversion touches the smaller image.
    return to_rgb(_fit(raw, width, height), bgr=True)


def _usable_raw(raw: Any) -> bool:
    return isinstance(raw, np.ndarray) and raw.ndim in (2, 3) and raw.shape[0] > 0 and raw.shape[1] > 0


def _has_ffmpeg() -> bool:
    registry = getattr(cv2, "videoio_registry", None)
    if registry is None or not hasattr(registry, "hasBackend"):
        return True  # an OpenCV too old to tell; let the open attempts report failures
    return bool(registry.hasBackend(cv2.CAP_FFMPEG))


def _open_url(url: str) -> cv2.VideoCapture:
    timeout_ms = int(_NETWORK_TIMEOUT_S * 1000)
    params = []
    for prop in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC"):
        if hasattr(cv2, prop):
            params += [getattr(cv2, prop), timeout_ms]
    try:
        return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    except (TypeError, cv2.error):  # OpenCV < 4.5.2 has no params argument
        return cv2.VideoCapture(url, cv2.CAP_FFMPEG)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
