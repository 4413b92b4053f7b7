"""Device configs load and validate; bad user configs give errors that name the file and the key."""

from __future__ import annotations

import pytest

from edge.config import ConfigError, device_names, load_config


def test_every_shipped_device_config_is_valid():
    assert set(device_names()) >= {"pi4", "pi5", "pi4-coral", "generic-x86"}
    for name in device_names():
        config = load_config(name)
        assert config.device_name == name
        assert config.detector.cascade_params().min_face_size == config.detector.min_face_size


def test_user_config_overrides_device(tmp_path):
    user = tmp_path / "me.yaml"
    user.write_text("detector:\n  num_threads: 1\n  min_face_size: 48\n")
    config = load_config("pi4", user)
    assert config.detector.num_threads == 1 and config.detector.min_face_size == 48.0
    assert config.detector.device == load_config("pi4").detector.device  # untouched keys come from the device


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("detector:\n  num_thread: 2\n", r"me\.yaml: detector\.num_thread: unknown key; did you mean `num_threads`\?"),
        ("detecter: {}\n", r"me\.yaml: detecter: unknown key"),
        ("detector:\n  num_threads: 0\n", r"me\.yaml: detector\.num_threads: must be between 1 and 16, got 0"),
        ("detector:\n  num_threads: two\n", r"me\.yaml: detector\.num_threads: expected int, got str"),
        ("detector:\n  num_threads: true\n", r"detector\.num_threads: expected int, got bool"),
        ("detector:\n  device: tpu\n", r"me\.yaml: detector\.device: unknown device 'tpu'"),
        ("detector: [1, 2]\n", r"me\.yaml: detector: expected a mapping"),
        ("detector:\n  num_threads: [\n", r"me\.yaml: line \d+ malformed YAML"),
        ("- a\n- b\n", r"me\.yaml: expected a mapping at the top level"),
        ("tracker:\n  max_missed: 12\n", r"me\.yaml: tracker\.max_missed: no longer a key: use tracker\.max_missing, "
                                        r"in seconds"),
        ("mqtt:\n  user: anna\n", r"mqtt\.user: unknown key; did you mean `username`\?"),
        ("mqtt:\n  password: secret\n", r"mqtt\.password: unknown key; the password is not written in the config: "
                                       r"set the variable named by `password_env`"),
        ("mqtt:\n  host: 127.0.0.1:53941\n", r"mqtt\.host: '127\.0\.0\.1:53941' holds a port: write mqtt\.host: "
                                            r"127\.0\.0\.1 and mqtt\.port: 53941"),
        ("mqtt:\n  host: '[fd00::2]:1883'\n", r"holds a port: write mqtt\.host: fd00::2 and mqtt\.port: 1883"),
        ("mqtt:\n  host: mqtts://broker.lan:8883\n", r"is a URL: write only the host \(mqtt\.host: broker\.lan\)"),
        ("enroll:\n  samples: 0\n", r"enroll\.samples: must be between 1 and 1000, got 0"),
        ("gallery:\n  watch_interval: 0\n", r"gallery\.watch_interval: must be between 0\.1 and 3600\.0"),
        ("tracker:\n  max_missing: -1\n", r"tracker\.max_missing: must be between 0\.0 and 60\.0, got -1\.0"),
    ],
)
def test_bad_user_config_names_file_and_key(tmp_path, text, message):
    user = tmp_path / "me.yaml"
    user.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config("generic-x86", user)


def test_an_ipv6_broker_address_is_a_host(tmp_path):
    user = tmp_path / "me.yaml"
    user.write_text("mqtt:\n  host: '::1'\n  port: 1884\n")
    assert (load_config("generic-x86", user).mqtt.host, load_config("generic-x86", user).mqtt.port) == ("::1", 1884)


def test_missing_files_and_unknown_device(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_config(None, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown device 'pi9'.*known: generic-x86"):
        load_config("pi9")


def test_empty_user_config_is_the_device_config(tmp_path):
    user = tmp_path / "empty.yaml"
    user.write_text("")
    assert load_config("pi5", user) == load_config("pi5")
