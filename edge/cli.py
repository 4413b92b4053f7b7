"""``doorface``: the on-device command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edge import __version__

log = logging.getLogger("doorface")

EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1
EXIT_SETUP_ERROR = 2


def _load_detector(args, device=None):
    from edge.config import load_config
    from edge.detector import MtcnnDetector
    from edge.manifest import Manifest

    config = load_config(args.device_config, args.config)
    detector_cfg = config.detector
    device = device or detector_cfg.device
    threads = args.threads or detector_cfg.num_threads
    manifest = Manifest.load(Path(config.models_dir) if config.models_dir else None)
    params = detector_cfg.cascade_params()
    if args.min_face_size:
        from dataclasses import replace

        params = replace(params, min_face_size=args.min_face_size)
    return MtcnnDetector.from_manifest(manifest, num_threads=threads, device=device, params=params)


def _cmd_detect(args) -> int:
    from edge.draw import draw_detections
    from edge.image_io import ImageError, load_image, save_image

    detector = _load_detector(args)
    failures = 0
    out_dir = Path(args.draw) if args.draw else None
    for path in args.images:
        try:
            image = load_image(path)
            detections = detector(image)
        except ImageError as exc:
            failures += 1
            if args.json:
                print(json.dumps({"image": path, "error": str(exc), "faces": []}), flush=True)
            else:
                print(f"{path}: error: {exc}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"image": path, "faces": detections.to_list()}), flush=True)
        else:
            print(f"{path}: {len(detections)} face{'s' if len(detections) != 1 else ''}")
            for i, face in enumerate(detections.faces, 1):
                d = face.to_dict()
                print(f"  {i}: box {d['box']} score {d['score']:.3f} landmarks {d['landmarks']}")
        if out_dir is not None:
            target = out_dir / (Path(path).stem + "_faces.jpg")
            save_image(target, draw_detections(image, detections))
            if not args.json:
                print(f"  drawn to {target}")
    return EXIT_SOME_INPUTS_FAILED if failures else EXIT_OK


def _embedder_threshold(entry, which: str):
    """The manifest's LFW threshold for this embedder, or None before `doorface-convert evaluate lfw` has run."""
    value = entry.fields.get("thresholds", {}).get(which)
    return float(value) if value is not None else None


def _cmd_compare(args) -> int:
    import numpy as np

    from edge.config import load_config
    from edge.embedder import Embedder, distance
    from edge.image_io import ImageError, load_image
    from edge.interpreter import resolve_device
    from edge.manifest import Manifest

    config = load_config(args.device_config, args.config)
    manifest = Manifest.load(Path(config.models_dir) if config.models_dir else None)
    key = args.model or config.embedder.model
    device = resolve_device(config.detector.device)  # one warning, not one per interpreter, if it is absent
    embedder = Embedder(manifest.entry(key), num_threads=args.threads or config.embedder.num_threads, device=device)
    detector = _load_detector(args, device)
    threshold = _embedder_threshold(manifest.entry(key), config.embedder.threshold)
    faces, vectors, failures = [], [], 0
    for path in args.images:
        try:
            image = load_image(path)
        except ImageError as exc:
            failures += 1
            print(f"{path}: error: {exc}", file=sys.stderr)
            continue
        detections = detector(image)
        if len(detections) == 0:
            print(f"{path}: no face found", file=sys.stderr)
        for i, face in enumerate(detections.faces):
            faces.append({"image": path, "face": i, "box": face.to_dict()["box"], "score": round(face.score, 4)})
        vectors.append(embedder(image, detections.landmarks))
    matrix = distance(np.concatenate(vectors), np.concatenate(vectors), embedder.spec.metric) if faces else \
        np.zeros((0, 0))
    np.fill_diagonal(matrix, 0.0)
    same = (matrix <= threshold) if threshold is not None else None
    if args.json:
        print(json.dumps({"model": key, "metric": embedder.spec.metric, "threshold": threshold,
                          "threshold_kind": config.embedder.threshold, "faces": faces,
                          "distances": np.round(matrix, 4).tolist(),
                          "same": same.tolist() if same is not None else None}))
    else:
        for n, face in enumerate(faces):
            print(f"[{n}] {face['image']} face {face['face'] + 1} (score {face['score']:.3f})")
        if threshold is None:
            print(f"model '{key}' has no LFW threshold yet (run `doorface-convert evaluate lfw`): distances only")
        else:
            print(f"{embedder.spec.metric} distance; same person if <= {threshold:.4f} "
                  f"({key}, LFW {config.embedder.threshold} threshold)")
        print("      " + "".join(f"{n:>8}" for n in range(len(faces))))
        for n, row in enumerate(matrix):
            print(f"{n:>6}" + "".join(f"{v:8.4f}" for v in row))
        if same is not None:
            for a in range(len(faces)):
                for b in range(a + 1, len(faces)):
                    verdict = "same" if same[a, b] else "different"
                    print(f"[{a}] vs [{b}]: {matrix[a, b]:.4f} {verdict}")
    return EXIT_SOME_INPUTS_FAILED if failures else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="doorface", description="Edge face recognition for door cameras.")
    parser.add_argument("--version", action="version", version=f"doorface {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="user YAML that overrides the device config")
    common.add_argument("--device-config", help="device_configs/<NAME>.yaml (default: generic-x86)")
    common.add_argument("--threads", type=int, help="interpreter threads (default: from the config)")
    sub = parser.add_subparsers(dest="command", required=True)

    detect = sub.add_parser("detect", parents=[common], help="find faces and their 5 landmarks in images")
    detect.add_argument("images", nargs="+", metavar="IMAGE")
    detect.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    detect.add_argument("--draw", metavar="OUT_DIR", help="write each image with boxes and landmarks drawn")
    detect.add_argument("--min-face-size", type=float, help="override the config's smallest face side (pixels)")
    detect.set_defaults(func=_cmd_detect)

    compare = sub.add_parser("compare", parents=[common],
                             help="embed every face of the images and print their distance matrix")
    compare.add_argument("images", nargs="+", metavar="IMAGE")
    compare.add_argument("--model", help="embedder manifest key (default: the config's embedder.model)")
    compare.add_argument("--json", action="store_true", help="print one JSON object")
    compare.set_defaults(func=_cmd_compare, min_face_size=None)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from edge.config import ConfigError
    from edge.interpreter import InterpreterUnavailable
    from edge.manifest import ManifestError, ModelIntegrityError

    if getattr(args, "threads", None) is not None and args.threads < 1:
        print("doorface: error: --threads must be >= 1", file=sys.stderr)
        return EXIT_SETUP_ERROR
    try:
        return args.func(args)
    except (ConfigError, ManifestError, ModelIntegrityError, InterpreterUnavailable, ValueError) as exc:
        print(f"doorface: error: {exc}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
