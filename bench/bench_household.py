"""How long the household's gallery sync takes, on a real mosquitto on 127.0.0.1 (``python -m bench.bench_household``).

Two cameras' galleries, each with the sync ``doorface run`` runs (edge.household.HouseholdSync, its own thread and
broker connection). On the first one a person is enrolled, renamed, then removed, each change shared the way
``doorface enroll`` / ``people`` share it (edge.household.sync_change: connect, catch up, publish, wait for the
broker); the figure is the time from the change to the other camera's gallery holding it. Then a third camera joins a
household of 10 people × 10 faces: the time until it holds them all (what ``doorface run`` waits before its first
frame). Faces are real embeddings of LFW photos (mobilefacenet). Writes ``household.json`` and ``household.md``
(the README's block).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.config import Config, HouseholdConfig, MqttConfig, load_config
from edge.gallery import Gallery
from edge.household import Topics, encode_message, person_id_for
from edge.household_replica import Replica
from edge.household_sync import HouseholdSync, sync_change
from edge.runner import load_models, open_gallery

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' mosquitto launcher: one way to start a throw-away broker
from mqtt_broker import Broker  # noqa: E402

RESULTS = ROOT / "bench" / "results"
KEY = "bench-household-key-0123456789abcdef0123456789"
PHOTOS = ["Tony_Blair_0018", "Tony_Blair_0032", "Tony_Blair_0048", "Tony_Blair_0053", "Serena_Williams_0001",
          "Serena_Williams_0003", "Serena_Williams_0014", "Serena_Williams_0032", "Hugo_Chavez_0002",
          "Hugo_Chavez_0027"]


def _shared() -> Path:
    return Path(os.environ.get("DOORFACE_SHARED", ROOT.parent / "shared")).resolve()


def _vectors(config: Config) -> np.ndarray:
    """Real embeddings of 10 LFW faces (one per photo)."""
    from edge.image_io import load_image

    models = load_models(config, threads=1)
    out = []
    for stem in PHOTOS:
        image = load_image(_shared() / "data" / "lfw" / "images" / stem.rsplit("_", 1)[0] / f"{stem}.jpg")
        detections = models.detector(image)
        out.append(models.embedder(image, detections.landmarks[:1])[0])
    return np.stack(out)


def _config(broker: Broker, folder: Path, camera: str) -> Config:
    base = load_config()
    return replace(base, camera=replace(base.camera, name=camera),
                   gallery=replace(base.gallery, path=str(folder / f"{camera}.sqlite")),
                   mqtt=MqttConfig(host=broker.host, port=broker.port, keepalive=5),
                   household=HouseholdConfig(name="bench", key=KEY, sync_wait=10.0))


def _sync(config: Config, spec) -> HouseholdSync:
    return HouseholdSync(config, Path(config.gallery.path), embedder_key=spec.key, embedder_sha256=spec.sha256,
                         dim=spec.dim, metric=spec.metric).start()


def _wait(predicate, timeout: float = 30.0) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise RuntimeError("the other camera did not get the change in time")
        time.sleep(0.002)
    return time.perf_counter()


def _stats(ms: list[float]) -> dict:
    return {"n": len(ms), "median_ms": round(float(np.median(ms)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1),
            "max_ms": round(float(max(ms)), 1)}


def measure(repeats: int, progress) -> dict:
    logging.getLogger("edge").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="doorface-bench-household-") as tmp:
        folder = Path(tmp)
        with Broker(folder / "broker") as broker:
            front, back = _config(broker, folder, "front"), _config(broker, folder, "back")
            vectors = _vectors(front)
            spec = load_models(front, threads=1).embedder.spec
            back_sync = _sync(back, spec)
            back_sync.wait_ready(10)
            timings: dict[str, list[float]] = {"enroll": [], "rename": [], "remove": []}
            with open_gallery(front, spec) as a, Gallery.open(back.gallery.path, embedder_key=spec.key,
                                                              embedder_sha256=spec.sha256, dim=spec.dim,
                                                              metric=spec.metric) as b:
                for n in progress(range(repeats)):
                    name, renamed = f"Person {n}", f"Renamed {n}"
                    start = time.perf_counter()
                    a.add(name, vectors[:3], ["a", "b", "c"])
                    sync_change(front, a)
                    timings["enroll"].append(_wait(lambda name=name: name in b) - start)
                    start = time.perf_counter()
                    a.rename(name, renamed)
                    sync_change(front, a)
                    timings["rename"].append(_wait(lambda renamed=renamed: renamed in b) - start)
                    start = time.perf_counter()
                    a.remove(renamed)
                    sync_change(front, a)
                    timings["remove"].append(_wait(lambda renamed=renamed: renamed not in b) - start)
            back_sync.stop()

            # A household of 10 people with 10 faces each; a camera with an empty gallery joins.
            with open_gallery(front, spec) as a:
                for p in range(10):
                    a.add(f"Member {p}", np.roll(vectors, p, axis=0), [f"photo{i}" for i in range(10)])
                sync_change(front, a)
                state_bytes = None
                topic = Topics.of(front.mqtt.prefix, "bench").person(person_id_for("Member 0"))
            joins = []
            for n in progress(range(max(3, repeats // 3))):
                late = _config(broker, folder, f"garage{n}")
                start = time.perf_counter()
                sync = _sync(late, spec)
                if not sync.wait_ready(30):
                    raise RuntimeError("the joining camera did not catch up")
                joins.append(time.perf_counter() - start)
                sync.stop()
                with Gallery.open(late.gallery.path, embedder_key=spec.key, embedder_sha256=spec.sha256, dim=spec.dim,
                                  metric=spec.metric) as g:
                    assert len(g) == 10 and all(p.embeddings == 10 for p in g.persons())
                    if state_bytes is None:
                        replica = Replica(g, household="bench", camera="x")
                        state = replica.state(person_id_for("Member 0"))
                        state_bytes = len(encode_message(state, topic=topic, household="bench", camera="front",
                                                         key=KEY.encode()))
                        replica.close()
    return {
        "what": "time from a change on one camera's gallery (shared as doorface enroll/people do) to another "
                "camera's gallery holding it; time for a camera joining a household of 10 people x 10 faces to "
                "hold them all",
        "broker": "mosquitto on 127.0.0.1",
        "changes": {kind: _stats([t * 1000 for t in ts]) for kind, ts in timings.items()},
        "join_10x10": _stats([t * 1000 for t in joins]),
        "message_bytes_10_faces": state_bytes,
        "embedder": spec.key,
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count()},
    }


def table(result: dict) -> str:
    c = result["changes"]
    rows = [f"| {kind} on one camera, shared by `doorface {'enroll' if kind == 'enroll' else 'people ' + kind}` | "
            f"{c[kind]['median_ms']:.0f} ms | {c[kind]['max_ms']:.0f} ms |" for kind in ("enroll", "rename", "remove")]
    j = result["join_10x10"]
    rows.append(f"| a camera joins a household of 10 people × 10 faces | {j['median_ms']:.0f} ms | "
                f"{j['max_ms']:.0f} ms |")
    return (f"Gallery sync over a mosquitto on the same host (`python -m bench.bench_household`, {c['enroll']['n']} "
            f"changes of each kind, {result['machine']['arch']}, {result['machine']['cpus']} CPUs); time until the "
            "other camera's gallery holds the change, which a running `doorface run` uses from its next frame. "
            f"One person with 10 faces is a {result['message_bytes_10_faces'] / 1024:.1f} KiB message "
            f"({result['embedder']}).\n\n"
            "| change | median | slowest |\n|---|---|---|\n" + "\n".join(rows) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="changes of each kind (default 15)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for household.json and household.md")
    args = parser.parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:  # the runtime-only install has no tqdm: plain iteration
        def tqdm(items, **_):
            return items
    result = measure(args.repeats, lambda items: tqdm(items, desc="household sync", unit="round"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "household.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "household.md").write_text(table(result), encoding="utf-8")
    print(json.dumps(result["changes"]), json.dumps(result["join_10x10"]))
    print(f"wrote {args.out / 'household.json'} and household.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
