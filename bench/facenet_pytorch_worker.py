"""facenet-pytorch (fp32 MTCNN + InceptionResnetV1) on the frames of ``bench.bench_floor``: its comparison column.

Runs under another Python that has facenet-pytorch (``python -m venv fp && fp/bin/pip install facenet-pytorch``)
and imports nothing of this repository, only numpy, torch and facenet_pytorch. The work per frame is the same as the
edge pipeline's in the bench: every face detected (``MTCNN.detect``), cut out (``MTCNN.extract``, 160×160) and
embedded (``InceptionResnetV1``, one batch per frame). MTCNN's weights ship in the package; InceptionResnetV1's
pretrained weights are a download from GitHub releases, not a package, so it runs with random weights: the same
arithmetic and time, no meaningful embedding (the JSON says so).

    fp/bin/python bench/facenet_pytorch_worker.py FRAMES.npy THREADS MIN_FACE_SIZE

Prints one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from importlib import metadata

import numpy as np

MS = 1e3
STAGES = ("detect", "align", "embed", "total")


def measure(frames_path: str, threads: int, min_face_size: float) -> dict:
    import torch
    from facenet_pytorch import MTCNN, InceptionResnetV1
    from PIL import Image

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    start = time.perf_counter()
    mtcnn = MTCNN(min_face_size=int(round(min_face_size)), keep_all=True, device="cpu")
    resnet = InceptionResnetV1(pretrained=None).eval()
    startup_ms = (time.perf_counter() - start) * MS
    # PIL images, as its README feeds them (its numpy path needs OpenCV, which the package does not require).
    frames = [Image.fromarray(frame) for frame in np.load(frames_path)]

    def one_frame(frame) -> dict:
        t0 = time.perf_counter()
        boxes, _ = mtcnn.detect(frame)
        t1 = time.perf_counter()
        faces = mtcnn.extract(frame, boxes, None) if boxes is not None else None
        t2 = time.perf_counter()
        if faces is not None:
            resnet(faces)
        t3 = time.perf_counter()
        return {"detect": (t1 - t0) * MS, "align": (t2 - t1) * MS, "embed": (t3 - t2) * MS,
                "total": (t3 - t0) * MS, "faces": 0 if boxes is None else len(boxes)}

    with torch.inference_mode():
        for frame in frames:  # warm-up
            one_frame(frame)
        rows = [one_frame(frame) for frame in frames]
    return {
        "library": f"facenet-pytorch {metadata.version('facenet-pytorch')}",
        "torch": torch.__version__,
        "weights": "MTCNN: the package's own; InceptionResnetV1: random (timing only, pretrained weights not "
                   "downloadable here)",
        "threads": threads,
        "min_face_size": min_face_size,
        "frames": len(frames),
        "startup_ms": startup_ms,
        "per_frame": {key: [row[key] for row in rows] for key in (*STAGES, "faces")},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(measure(argv[0], int(argv[1]), float(argv[2]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
