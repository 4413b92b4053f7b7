"""The runtime commands on real parts: `doorface demo`, `enroll` (photos and video), `people`, `doctor`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from door_scene import ENROLL, PERSON_A, doorface, lfw_photo, write_config
from mqtt_broker import MOSQUITTO, Broker


def test_demo_prints_one_json_line_per_event(cli_env):
    result = doorface("demo", env=cli_env)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events, "the demo clip gave no event"
    assert [e["name"] for e in events if e["event_type"] == "recognized"] == ["Lin-Manuel Miranda"]
    for event in events:
        assert set(event) >= {"event_id", "event_type", "camera", "name", "confidence", "distance", "box",
                              "track_id", "timestamp", "embedder"}
    assert "275 frames" in result.stderr and "fps" in result.stderr
    assert "rejected" in result.stderr  # the quality gate's counts by reason


def test_enroll_reports_skipped_photos_and_people_lists_renames_removes(tmp_path, shared_data, cli_env):
    config = str(write_config(tmp_path, None, tmp_path))
    group = shared_data / "video" / "two_people.jpg"
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    # Tony_Blair_0018 (one of ENROLL's) is itself far from his other photos with MobileFaceNet: not used here.
    photos = [str(lfw_photo(shared_data, s)) for s in ("Tony_Blair_0032", "Tony_Blair_0048", "Tony_Blair_0086")]
    mixed_in = lfw_photo(shared_data, "Hugo_Chavez_0002")  # someone else's photo, by mistake
    result = doorface("enroll", PERSON_A, *photos, str(mixed_in), str(group), str(text), "--config", config,
                      env=cli_env)
    assert result.returncode == 1, result.stderr  # enrolled, but two inputs need the user's attention
    assert f"enrolled {PERSON_A!r}: 4 new face(s)" in result.stderr
    assert "two_people.jpg" in result.stderr and "notes.jpg" in result.stderr
    flagged = [line for line in result.stderr.splitlines() if line.startswith("  ! ")]
    assert len(flagged) == 1 and mixed_in.name in flagged[0], result.stderr
    assert "1 photo(s) marked '!' look unlike the other photos" in result.stderr

    nothing = doorface("enroll", "Nobody", str(text), "--config", config, env=cli_env)
    assert nothing.returncode == 1 and "nothing enrolled" in nothing.stderr

    listing = json.loads(doorface("people", "--json", "--config", config, env=cli_env).stdout)
    assert [(p["name"], p["embeddings"]) for p in listing["persons"]] == [(PERSON_A, 4)]
    assert listing["embedder"] == "mobilefacenet"

    thumbs = doorface("people", "thumbnails", PERSON_A, str(tmp_path / "thumbs"), "--config", config, env=cli_env)
    assert thumbs.returncode == 0, thumbs.stderr
    chips = sorted((tmp_path / "thumbs").glob("*.jpg"))
    assert len(chips) == 4 and all(c.read_bytes()[:2] == b"\xff\xd8" for c in chips)
    assert doorface("people", "rename", PERSON_A, "Tony", "--config", config, env=cli_env).returncode == 0
    missing = doorface("people", "remove", "Nobody", "--config", config, env=cli_env)
    assert missing.returncode == 2 and "Nobody" in missing.stderr and "Traceback" not in missing.stderr
    usage = doorface("people", "rename", "Tony", "--config", config, env=cli_env)
    assert usage.returncode == 2 and "rename OLD NEW" in usage.stderr
    assert doorface("people", "remove", "Tony", "--config", config, env=cli_env).returncode == 0
    assert json.loads(doorface("people", "--json", "--config", config, env=cli_env).stdout)["persons"] == []


def test_enroll_from_a_video_capture(tmp_path, shared_data, cli_env):
    config = str(write_config(tmp_path, None, tmp_path))
    # Lin-Manuel Miranda alone in front of the camera: frames 90-210 of the clip, as a short video.
    import cv2

    clip = tmp_path / "lin.mp4"
    reader = cv2.VideoCapture(str(shared_data / "video" / "short_hamilton_clip.mp4"))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (640, 360))
    for index in range(211):
        ok, frame = reader.read()
        assert ok
        if index >= 90:
            writer.write(frame)
    writer.release()
    reader.release()
    result = doorface("enroll", "Lin-Manuel Miranda", "--video", str(clip), "--samples", "5", "--config", config,
                      env=cli_env)
    assert result.returncode == 0, result.stderr
    persons = json.loads(doorface("people", "--json", "--config", config, env=cli_env).stdout)["persons"]
    assert persons == [{"name": "Lin-Manuel Miranda", "embeddings": 5}]
    # The faces enrolled from the video recognize his portrait (shown for a few frames, as a folder source).
    portrait = tmp_path / "portrait"
    portrait.mkdir()
    for i in range(6):
        shutil.copy(shared_data / "video" / "lin-manuel-miranda.png", portrait / f"{i}.png")
    run = doorface("run", "--config", config, "--no-mqtt", "--source", str(portrait), env=cli_env)
    assert run.returncode == 0, run.stderr
    assert [json.loads(line)["name"] for line in run.stdout.splitlines()] == ["Lin-Manuel Miranda"]


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
def test_doctor_says_what_is_fine_and_what_to_fix(tmp_path, shared_data, door_video, cli_env):
    with Broker(tmp_path / "broker") as broker:
        config = str(write_config(tmp_path, broker, door_video))
        before = doorface("doctor", "--config", config, env=cli_env)
        assert before.returncode == 1
        assert "[FAIL] gallery" in before.stdout and "doorface enroll" in before.stdout
        enrolled = doorface("enroll", PERSON_A, *[str(lfw_photo(shared_data, s)) for s in ENROLL[PERSON_A]],
                            "--config", config, env=cli_env)
        assert enrolled.returncode == 0, enrolled.stderr
        after = doorface("doctor", "--config", config, env=cli_env)
        port = broker.port
        # The broker flags override the config's: a wrong port fails, the right one on the command line passes.
        wrong = doorface("doctor", "--config", config, "--no-camera", "--mqtt-port", "1", env=cli_env)
        right = doorface("doctor", "--config", config, "--no-camera", "--mqtt-host", "127.0.0.1", "--mqtt-port",
                         str(port), env=cli_env)
    assert "[FAIL] mqtt" in wrong.stdout and "127.0.0.1:1" in wrong.stdout, wrong.stdout
    assert "[ok] mqtt" in right.stdout, right.stdout
    bad = doorface("doctor", "--config", config, "--no-camera", "--mqtt-host", f"127.0.0.1:{port}", env=cli_env)
    assert bad.returncode == 2 and f"write mqtt.host: 127.0.0.1 and mqtt.port: {port}" in bad.stderr, bad.stderr
    assert after.returncode == 0, after.stdout
    for part in ("interpreter", "model pnet", "model rnet", "model onet", "model mobilefacenet", "inference",
                 "accelerator",
                 "camera", "gallery", "mqtt"):
        assert f"[ok] {part}" in after.stdout, after.stdout
    assert f"127.0.0.1:{port}" in after.stdout
    down = doorface("doctor", "--config", config, "--source", str(tmp_path / "no-such-camera.mp4"), env=cli_env)
    assert down.returncode == 1
    assert "[FAIL] camera" in down.stdout and "[FAIL] mqtt" in down.stdout and "fix:" in down.stdout


def test_doctor_names_a_tampered_model(tmp_path, cli_env):
    from conftest import REPO_ROOT

    models = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "quantized_models", models)
    onet = models / json.loads((models / "manifest.json").read_text())["models"]["onet"]["file"]
    onet.write_bytes(onet.read_bytes()[:-10])
    config = str(write_config(tmp_path, None, tmp_path))
    result = doorface("doctor", "--config", config, "--no-camera", env={**cli_env, "DOORFACE_MODELS": str(models)})
    assert result.returncode == 1
    assert "[FAIL] model onet" in result.stdout and "git checkout" in result.stdout
    assert "[FAIL] inference" in result.stdout  # nothing runs on a broken model
    assert "[ok] model pnet" in result.stdout


@pytest.mark.skipif(Path("/dev/video0").exists(), reason="a camera is attached at /dev/video0")
def test_doctor_camera_check_is_quiet_and_quick_without_a_camera(tmp_path, cli_env):
    config = str(write_config(tmp_path, None, tmp_path))
    result = doorface("doctor", "--config", config, "--source", "0", env=cli_env)
    # Known without opening the device, so the 5 s wait for a first frame is not spent either.
    camera = [line for line in result.stdout.splitlines() if line.startswith("[FAIL] camera")]
    assert camera == ["[FAIL] camera: 0: no /dev/video0: no camera is attached"], result.stdout
    assert "WARN" not in result.stderr and "retrying" not in result.stderr, result.stderr


def test_enroll_progress_streams_each_photo_and_draws_a_bar_on_a_terminal():
    import io

    from edge.cli import _EnrollProgress
    from edge.enroll import PhotoOutcome

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    progress = _EnrollProgress("enrolling Anna", out)
    progress(1, 3, PhotoOutcome("a.jpg", "enrolled", 1, "face of 90 px enrolled"))
    bar = "enrolling Anna [" + "#" * 10 + "." * 20 + "] 1/3"
    assert out.getvalue() == "\r\x1b[K  + a.jpg: face of 90 px enrolled\n" + bar
    progress(3, 3, PhotoOutcome("c.jpg", "no_face", 0, "no face found"))
    assert out.getvalue().endswith("] 1/3\r\x1b[K  - c.jpg: no face found\n")  # the bar gives way; none after the last
