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


def _load_detector(args):
    from edge.config import load_config
    from edge.detector import MtcnnDetector
    from edge.manifest import Manifest

    config = load_config(args.device_config, args.config)
    detector_cfg = config.detector
    threads = args.threads or detector_cfg.num_threads
    manifest = Manifest.load(Path(config.models_dir) if config.models_dir else None)
    params = detector_cfg.cascade_params()
    if args.min_face_size:
        from dataclasses import replace

        params = replace(params, min_face_size=args.min_face_size)
    return MtcnnDetector.from_manifest(manifest, num_threads=threads, device=detector_cfg.device, params=params)


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
