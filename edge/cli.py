"""``doorface``: the on-device command line (the review commands are in :mod:`edge.review.commands`)."""

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


def _load_detector(args, placement=None):
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
    return MtcnnDetector.from_manifest(manifest, num_threads=threads, device=detector_cfg.device, params=params,
                                       placement=placement)


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

    from edge.accelerator import place_models
    from edge.config import load_config
    from edge.detector import MTCNN_KEYS
    from edge.embedder import Embedder, distance
    from edge.image_io import ImageError, load_image
    from edge.manifest import Manifest

    config = load_config(args.device_config, args.config)
    manifest = Manifest.load(Path(config.models_dir) if config.models_dir else None)
    key = args.model or config.embedder.model
    placement = place_models(manifest, config.detector.device, (*MTCNN_KEYS, key))  # one log line, not one per model
    embedder = Embedder.placed(manifest.entry(key), placement, num_threads=args.threads or config.embedder.num_threads)
    detector = _load_detector(args, placement)
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


def _load_runtime_config(args):
    """The config with the command line's overrides (--source, --gallery, --no-mqtt, --mqtt-host/port) applied."""
    from dataclasses import replace

    from edge.config import ConfigError, load_config

    config = load_config(args.device_config, args.config)
    if getattr(args, "source", None):
        config = replace(config, camera=replace(config.camera, source=str(args.source)))
    if getattr(args, "gallery", None):
        config = replace(config, gallery=replace(config.gallery, path=str(args.gallery)))
    if getattr(args, "no_mqtt", False):
        config = replace(config, mqtt=replace(config.mqtt, enabled=False))
    broker = {key: value for key, value in (("host", getattr(args, "mqtt_host", None)),
                                            ("port", getattr(args, "mqtt_port", None))) if value is not None}
    if broker:
        try:
            config = replace(config, mqtt=replace(config.mqtt, **broker))
        except ConfigError as exc:
            raise ConfigError(f"--mqtt-host/--mqtt-port: {exc}") from None
    return config


def _embedder_spec(config):
    from edge.embedder import EmbedderSpec
    from edge.manifest import Manifest

    return EmbedderSpec.from_entry(Manifest.load(config.models_dir).entry(config.embedder.model))


def _print_event(event) -> None:
    print(json.dumps(event.to_payload()), flush=True)


def _print_summary(summary, recognizer) -> None:
    from edge.motion import FULL, IDLE, WINDOW
    from edge.pipeline import STAGES

    stats = recognizer.stats()
    stages = stats["ms_per_detected_frame"]
    counts = stats["counts"]
    rejected = {k[len("rejected_"):]: v for k, v in counts.items() if k.startswith("rejected_")}
    print(f"doorface: {summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} fps), "
          f"{summary.events} events; ms per detection frame: "
          + ", ".join(f"{k} {stages[k]:.1f}" for k in STAGES)
          + "; searched " + ", ".join(f"{kind} {counts.get(f'search_{kind}', 0)}" for kind in (FULL, WINDOW, IDLE))
          + f"; faces {counts.get('faces', 0)}, embedded {counts.get('embedded', 0)}"
          + (", rejected " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) if rejected else ""),
          file=sys.stderr)


def _install_stop_handlers(stop) -> None:
    import signal

    def handler(signum, _frame):
        log.warning("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _start_household(config, gallery):
    """The household's gallery sync, caught up with the broker (bounded by household.sync_wait); None when off."""
    household = config.household
    if not household.enabled:
        return None
    if not config.mqtt.enabled:
        log.warning("household %r: MQTT is off (--no-mqtt or mqtt.enabled: false): this camera's gallery is not "
                    "shared", household.name)
        return None
    from edge.household_sync import HouseholdSync
    from edge.runner import thumbnail_embedder

    sync = HouseholdSync(config, gallery.path, embedder_key=gallery.embedder_key,
                         embedder_sha256=gallery.embedder_sha256, dim=gallery.dim, metric=gallery.metric,
                         reembed=thumbnail_embedder(config)).start()
    if not sync.wait_ready(household.sync_wait):
        log.warning("household %r: the broker's gallery did not arrive within household.sync_wait (%g s); starting "
                    "with this camera's gallery, updated as soon as the broker answers", household.name,
                    household.sync_wait)
    return sync


def _share_change(config, gallery) -> None:
    """After enroll / people rename / remove: send the change to the household's other cameras now if possible."""
    if not config.household.enabled:
        return
    from edge.household_sync import sync_change

    if sync_change(config, gallery):
        print(f"shared with household {config.household.name!r} (broker {config.mqtt.host}:{config.mqtt.port})",
              file=sys.stderr)


def _cmd_run(args) -> int:
    import threading

    from edge.runner import GalleryWatcher, build_recognizer, load_models, open_gallery, run
    from edge.sources import open_source

    config = _load_runtime_config(args)
    models = load_models(config, threads=args.threads)
    gallery = open_gallery(config, models.embedder.spec)
    household = _start_household(config, gallery)
    mqtt = config.mqtt
    recognizer = build_recognizer(config, models, gallery,
                                  keep_crops=config.visits.enabled or (mqtt.enabled and mqtt.publish_crops))
    record = None
    if config.visits.enabled:
        from edge.visits import open_visit_log

        record = open_visit_log(gallery, config, models.manifest.entry(models.embedder.key)).record
    persons = [p.name for p in gallery.persons()]
    sinks = []
    publisher = None
    if mqtt.enabled:
        from edge.mqtt import MqttError, MqttPublisher
        from edge.outbox import Outbox

        outbox = Outbox.open(mqtt.resolved_queue_path(), mqtt.queue_max_events)
        publisher = MqttPublisher(mqtt, config.camera.name, outbox, persons)
        publisher.start()
        try:
            connected = publisher.wait_connected(args.connect_timeout)
        except MqttError:
            publisher.stop(timeout=0)  # a refused login or certificate: retrying will not help
            raise
        if not connected:
            log.warning("MQTT broker %s:%d not reachable yet; events are queued on disk in %s and sent once it is",
                        mqtt.host, mqtt.port, mqtt.resolved_queue_path())
        sinks.append(publisher.publish_event)
    if args.print_events or publisher is None:
        sinks.append(_print_event)
    stop = threading.Event()
    _install_stop_handlers(stop)
    cam = config.camera
    watcher = GalleryWatcher(gallery, recognizer, models.manifest.entry(models.embedder.key), config,
                             on_persons=publisher.set_persons if publisher is not None else None)
    if household is not None:
        household.on_change = watcher.poke
    try:
        with open_source(cam.source, width=cam.width, height=cam.height,
                         reconnect_max_delay=cam.reconnect_max_delay) as source:
            summary = run(source, recognizer, sinks, stop=stop, max_frames=args.max_frames, on_frame=watcher,
                          departure_sinks=[publisher.publish_departure] if publisher is not None else (),
                          record=record)
    finally:
        gallery.close()
        if household is not None:
            household.stop()
        if publisher is not None:
            if not publisher.flush(args.flush_timeout):
                log.warning("%d messages not delivered yet; they stay queued in %s for the next start",
                            publisher.stats.queued, mqtt.resolved_queue_path())
            publisher.stop()
    _print_summary(summary, recognizer)
    return EXIT_OK


class _EnrollProgress:
    """Each input's outcome as soon as it is known, with a bar on a terminal: a big folder is not silent until the
    end. ``progress(done, total, outcome)`` as edge.enroll calls it."""

    BAR_WIDTH = 30

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int, outcome) -> None:
        if self.tty:
            self.stream.write("\r\033[K")  # the bar's line, cleared for the outcome
        self.stream.write(f"  {'+' if outcome.enrolled else '-'} {outcome.source}: {outcome.message}\n")
        if self.tty and done < total:
            filled = self.BAR_WIDTH * done // max(total, 1)
            self.stream.write(f"{self.label} [{'#' * filled}{'.' * (self.BAR_WIDTH - filled)}] {done}/{total}")
        self.stream.flush()


def _report_enrollment(report, *, from_photos: bool) -> int:
    if report.enrolled == 0:
        print(f"doorface: error: nothing enrolled for {report.name!r}: no usable face in the inputs "
              "(one clear, frontal face per photo, at least min face size)", file=sys.stderr)
        return EXIT_SOME_INPUTS_FAILED
    person = report.person
    print(f"enrolled {report.name!r}: {report.enrolled} new face(s), {person.embeddings} in total", file=sys.stderr)
    unlike = report.unlike_others
    for outcome in unlike:
        print(f"  ! {outcome.source}: {outcome.message}", file=sys.stderr)
    if len(unlike) >= max(2, report.enrolled / 3):
        print(f"doorface: warning: these photos look like several different people, not one {report.name!r}: "
              "enroll each person from their own photos, under their own name (`doorface people remove "
              f"{report.name!r}` undoes this enrollment)", file=sys.stderr)
    elif unlike:
        print(f"doorface: warning: {len(unlike)} photo(s) marked '!' look unlike the other photos of "
              f"{report.name!r}: if one shows someone else, remove {report.name!r} (`doorface people remove`) and "
              "enroll again without it", file=sys.stderr)
    skipped = len(report.outcomes) - report.enrolled
    # Skipped video frames are expected (no face, several faces); a skipped photo is an input the user must fix.
    return EXIT_SOME_INPUTS_FAILED if skipped and from_photos else EXIT_OK


def _cmd_enroll(args) -> int:
    from dataclasses import replace

    from edge.enroll import enroll_frames, enroll_photos
    from edge.matcher import threshold_from_entry
    from edge.runner import load_models, open_gallery

    if not args.photos and not args.video:
        print("doorface: error: give photos/folders or --video SOURCE", file=sys.stderr)
        return EXIT_SETUP_ERROR
    config = _load_runtime_config(args)
    models = load_models(config, threads=args.threads)
    # The matcher's threshold, so that a photo it would set aside as unlike the person's others is reported.
    threshold = threshold_from_entry(models.manifest.entry(models.embedder.key), config.embedder.threshold)
    settings = config.enroll if args.samples is None else replace(config.enroll, samples=args.samples)
    common = {"gate": config.quality, "settings": settings, "thumbnails": config.gallery.thumbnails,
              "threshold": threshold, "progress": _EnrollProgress(f"enrolling {args.name}")}
    with open_gallery(config, models.embedder.spec) as gallery:
        if args.photos:
            report = enroll_photos(gallery, args.name, args.photos, models.detector, models.embedder, **common)
        else:
            from edge.sources import open_source

            cam = config.camera
            seconds = args.seconds if args.seconds is not None else settings.seconds
            with open_source(args.video, width=cam.width, height=cam.height,
                             reconnect_max_delay=cam.reconnect_max_delay) as source:
                frames = ((f"{source.name}#{f.index}", f.image) for f in _limited(source, seconds))
                report = enroll_frames(gallery, args.name, frames, models.detector, models.embedder,
                                       **common)
        if report.enrolled:
            _share_change(config, gallery)
    return _report_enrollment(report, from_photos=bool(args.photos))


def _limited(source, seconds: float):
    """Frames of a source for at most ``seconds`` of wall time (a live camera never ends by itself)."""
    import time

    deadline = time.monotonic() + seconds
    for frame in source.frames():
        yield frame
        if time.monotonic() > deadline:
            return


def _cmd_people(args) -> int:
    from edge.runner import open_gallery

    config = _load_runtime_config(args)
    spec = _embedder_spec(config)
    with open_gallery(config, spec, create=args.action == "list") as gallery:
        if args.action == "list":
            persons = gallery.persons()
            if args.json:
                print(json.dumps({"gallery": str(gallery.path), "embedder": spec.key,
                                  "persons": [{"name": p.name, "embeddings": p.embeddings} for p in persons]}))
            else:
                print(f"{gallery.path} ({spec.key}): {len(persons)} person(s)")
                for p in persons:
                    print(f"  {p.name}: {p.embeddings} face(s)")
        elif args.action == "thumbnails":
            name, out_dir = args.names
            chips = gallery.thumbnails(name)
            target = Path(out_dir)
            target.mkdir(parents=True, exist_ok=True)
            for n, (source, jpeg) in enumerate(chips):
                (target / f"{n:03d}.jpg").write_bytes(jpeg)
                print(f"{target / f'{n:03d}.jpg'}: from {source}")
            if not chips:
                print(f"{name!r} has no thumbnails (gallery.thumbnails was off when they were enrolled)",
                      file=sys.stderr)
        elif args.action == "rename":
            gallery.rename(args.names[0], args.names[1])
            print(f"renamed {args.names[0]!r} to {args.names[1]!r}", file=sys.stderr)
        elif args.action == "merge":
            person = gallery.merge(args.names[0], args.names[1])
            print(f"merged {args.names[0]!r} into {person.name!r}: {person.embeddings} face(s), and their visits",
                  file=sys.stderr)
        else:
            gallery.remove(args.names[0])
            print(f"removed {args.names[0]!r} and their faces", file=sys.stderr)
        if args.action in ("rename", "remove"):
            _share_change(config, gallery)
    return EXIT_OK


def _cmd_demo(args) -> int:
    import tempfile
    from dataclasses import replace

    import yaml

    from edge.enroll import enroll_photos
    from edge.resources import bundled_dir
    from edge.runner import build_recognizer, load_models, open_gallery, run
    from edge.sources import open_source

    demo_dir = bundled_dir("demo")
    people = yaml.safe_load((demo_dir / "demo.yaml").read_text(encoding="utf-8"))
    config = _load_runtime_config(args)
    config = replace(config, mqtt=replace(config.mqtt, enabled=False))
    models = load_models(config, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="doorface-demo-") as tmp:
        with open_gallery(config, models.embedder.spec, path=Path(tmp) / "gallery.sqlite") as gallery:
            for name, photo in people["enroll"].items():
                report = enroll_photos(gallery, name, [demo_dir / photo], models.detector, models.embedder,
                                       gate=config.quality, thumbnails=False)
                if report.enrolled == 0:
                    raise ValueError(f"demo still {photo} gave no face: {report.outcomes[0].message}")
                print(f"enrolled {name} from demo/{photo}", file=sys.stderr)
            recognizer = build_recognizer(config, models, gallery)
        clip = demo_dir / people["clip"]
        cam = config.camera
        with open_source(str(clip), width=cam.width, height=cam.height) as source:
            print(f"running on demo/{clip.name}; one JSON line per event (the MQTT payload):", file=sys.stderr)
            summary = run(source, recognizer, [_print_event])
    _print_summary(summary, recognizer)
    return EXIT_OK


def _cmd_doctor(args) -> int:
    from edge.doctor import run_checks

    config = _load_runtime_config(args)
    print(f"config: device {config.device_name}"
          + (f" + {args.config}" if args.config else "") + f"; camera {config.camera.name!r}")
    checks = run_checks(config, source=args.source, camera=not args.no_camera)
    for check in checks:
        print(check.line())
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed")
    return EXIT_SOME_INPUTS_FAILED if failed else EXIT_OK


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
    detect.add_argument("images", nargs="+", metavar="IMAGE", help="image files to find faces in")
    detect.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    detect.add_argument("--draw", metavar="OUT_DIR", help="write each image with boxes and landmarks drawn")
    detect.add_argument("--min-face-size", type=float, help="override the config's smallest face side (pixels)")
    detect.set_defaults(func=_cmd_detect)

    compare = sub.add_parser("compare", parents=[common],
                             help="embed every face of the images and print their distance matrix")
    compare.add_argument("images", nargs="+", metavar="IMAGE",
                         help="image files; every face found in them is compared with every other")
    compare.add_argument("--model", help="embedder manifest key (default: the config's embedder.model)")
    compare.add_argument("--json", action="store_true", help="print one JSON object")
    compare.set_defaults(func=_cmd_compare, min_face_size=None)

    broker_opt = argparse.ArgumentParser(add_help=False)
    broker_opt.add_argument("--mqtt-host", help="override mqtt.host: the broker's host name or address")
    broker_opt.add_argument("--mqtt-port", type=int, help="override mqtt.port")
    gallery_opt = argparse.ArgumentParser(add_help=False)
    gallery_opt.add_argument("--gallery", type=Path, help="gallery file (default: the config's gallery.path)")

    run_cmd = sub.add_parser("run", parents=[common, gallery_opt, broker_opt],
                             help="recognize people at the camera and publish events over MQTT")
    run_cmd.add_argument("--source", help="override camera.source: picamera2, a device index, a URL, a video, "
                                          "a folder")
    run_cmd.add_argument("--no-mqtt", action="store_true", help="do not publish (events go to stdout)")
    run_cmd.add_argument("--print-events", action="store_true", help="also print each event as a JSON line")
    run_cmd.add_argument("--max-frames", type=int, help="stop after this many frames")
    run_cmd.add_argument("--connect-timeout", type=float, default=5.0,
                         help="seconds to wait for the broker at start (default 5; events queue meanwhile)")
    run_cmd.add_argument("--flush-timeout", type=float, default=10.0,
                         help="seconds to wait at exit for queued events to be delivered (default 10)")
    run_cmd.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", parents=[common],
                          help="enroll the bundled stills and run on the bundled clip; prints each event")
    demo.set_defaults(func=_cmd_demo)

    enroll = sub.add_parser("enroll", parents=[common, gallery_opt],
                            help="add a person from photos/folders, or from a short capture of a camera or video")
    enroll.add_argument("name", help="the person's display name")
    enroll.add_argument("photos", nargs="*", metavar="PHOTO_OR_FOLDER",
                        help="photos of the person, or folders of them (one face per photo, or one dominant face)")
    enroll.add_argument("--video", metavar="SOURCE", help="capture from a camera/URL/video file instead of photos")
    enroll.add_argument("--samples", type=int, help="faces to keep from --video (default: enroll.samples, 10)")
    enroll.add_argument("--seconds", type=float, help="longest --video capture (default: enroll.seconds, 20 s)")
    enroll.set_defaults(func=_cmd_enroll)

    people = sub.add_parser("people", parents=[common, gallery_opt],
                            help="list, rename, merge or remove enrolled people")
    people.add_argument("action", nargs="?", default="list",
                        choices=("list", "rename", "merge", "remove", "thumbnails"), help="what to do (default: list)")
    people.add_argument("names", nargs="*", metavar="NAME",
                        help="rename: OLD NEW; merge: NAME INTO (NAME's faces and visits go to INTO); remove: NAME; "
                             "thumbnails: NAME OUT_DIR (the enrolled faces as JPEG)")
    people.add_argument("--json", action="store_true", help="list as JSON")
    people.set_defaults(func=_cmd_people)

    from edge.review.commands import add_parsers

    add_parsers(sub, [common, gallery_opt], lambda func: lambda args: func(args, _load_runtime_config(args)))

    doctor = sub.add_parser("doctor", parents=[common, gallery_opt, broker_opt],
                            help="check camera, models, interpreter, accelerator, gallery and broker")
    doctor.add_argument("--source", help="try this camera source instead of camera.source")
    doctor.add_argument("--no-camera", action="store_true", help="skip the camera check")
    doctor.set_defaults(func=_cmd_doctor)
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
    for option in ("mqtt_port", "port"):
        value = getattr(args, option, None)
        if value is not None and not 1 <= value <= 65535:
            print(f"doorface: error: --{option.replace('_', '-')} must be between 1 and 65535, got {value}",
                  file=sys.stderr)
            return EXIT_SETUP_ERROR
    if args.command == "enroll" and (args.samples is not None and args.samples < 1
                                     or args.seconds is not None and not args.seconds > 0):
        print("doorface: error: --samples must be >= 1 and --seconds > 0", file=sys.stderr)
        return EXIT_SETUP_ERROR
    if args.command == "people" and len(args.names) != {"list": 0, "rename": 2, "merge": 2, "remove": 1,
                                                        "thumbnails": 2}[args.action]:
        print("doorface: error: usage: people [list | rename OLD NEW | merge NAME INTO | remove NAME | "
              "thumbnails NAME OUT_DIR]", file=sys.stderr)
        return EXIT_SETUP_ERROR
    from edge.review.commands import usage_error

    if usage_error(args):
        print(f"doorface: error: {usage_error(args)}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    from edge.gallery import GalleryError
    from edge.household import HouseholdError
    from edge.mqtt import MqttError
    from edge.outbox import OutboxError
    from edge.sources import SourceError

    try:
        return args.func(args)
    except (ConfigError, ManifestError, ModelIntegrityError, InterpreterUnavailable, GalleryError, MqttError,
            OutboxError, SourceError, HouseholdError, ValueError) as exc:
        print(f"doorface: error: {exc}", file=sys.stderr)
        return EXIT_SETUP_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
