"""`doorface serve` as a user meets it: a real server process over a gallery the real pipeline filled, plain HTTP
for the error paths, and headless Chromium (Debian's chromium + chromedriver, driven by Selenium) for the page.

Set DOORFACE_SCREENSHOTS=docs/images to rewrite the page's screenshots linked from the README.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
from door_scene import doorface
from mqtt_broker import free_port, port_open
from review_scene import KNOWN, STRANGER, build_visit_log, run_clip

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CSRF = {"X-Requested-With": "doorface"}


@pytest.fixture(scope="module")
def logged(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("review")
    env = {**os.environ, "DOORFACE_HOME": str(folder / "home"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return folder, build_visit_log(folder, shared_data, env)


class Served:
    """A `doorface serve` process on a free port; stopped by :meth:`stop`."""

    def __init__(self, config: Path, env: dict, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--config", str(config),
                                         "--port", str(self.port), *extra], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"doorface serve did not start: {self.process.stderr.read()}")
            time.sleep(0.1)

    def request(self, path: str, body=None, *, headers=None, method=None) -> tuple[int, dict, bytes]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        all_headers = {"Content-Type": "application/json", **CSRF} if isinstance(body, dict) else {}
        all_headers.update(headers or {})
        request = urllib.request.Request(self.url + path, data=data, headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str, body=None, **kwargs) -> tuple[int, dict]:
        status, _, data = self.request(path, body, **kwargs)
        return status, json.loads(data)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture()
def served(tmp_path, logged, cli_env):
    folder, config = logged
    shutil.copy(folder / "gallery.sqlite", tmp_path / "gallery.sqlite")
    copy = tmp_path / "doorface.yaml"
    copy.write_text(config.read_text().replace(str(folder / "gallery.sqlite"), str(tmp_path / "gallery.sqlite")))
    server = Served(copy, cli_env)
    server.config = copy
    yield server
    server.stop()


def _stranger_group(server) -> dict:
    status, state = server.json("/api/state")
    assert status == 200
    return max(state["groups"], key=lambda g: g["visits"])


def test_the_page_and_its_state_are_served_from_the_package(served):
    status, headers, page = served.request("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/app.js"' in page and b"http" not in page.split(b"<body>")[0]  # no CDN: nothing from elsewhere
    for asset in ("/app.js", "/style.css"):
        assert served.request(asset)[0] == 200
    status, state = served.json("/api/state")
    assert status == 200 and state["camera"] == "front_door"
    assert _stranger_group(served)["visits"] == 3
    assert [p["name"] for p in state["people"]] == [KNOWN]
    crop = served.request(f"/api/visits/{state['visits'][0]['id']}/crop.jpg")
    assert crop[0] == 200 and crop[1]["Content-Type"] == "image/jpeg" and crop[2][:2] == b"\xff\xd8"
    assert served.request("/../edge/cli.py")[0] == 404
    assert served.request("/api/visits/99999/crop.jpg")[0] == 404


def test_bad_requests_get_clear_errors_and_change_nothing(served):
    group = _stranger_group(served)
    before = served.json("/api/state")[1]
    status, body = served.json("/api/groups/99999/name", {"name": "X"})
    assert status == 404 and "no unknown-visitor group 99999" in body["error"]
    status, body = served.json(f"/api/groups/{group['id']}/name", {"name": KNOWN})
    assert status == 409 and "already enrolled" in body["error"]
    status, body = served.json(f"/api/groups/{group['id']}/name", {"name": "  "})
    assert status == 400 and "must not be empty" in body["error"]
    status, body = served.json(f"/api/groups/{group['id']}/add", {"person": "Nobody"})
    assert status == 404 and "no person named 'Nobody'" in body["error"]
    status, body = served.json(f"/api/groups/{group['id']}/name", b"{not json", headers={
        "Content-Type": "application/json", **CSRF})
    assert status == 400 and "not valid JSON" in body["error"]
    # A change without the page's header (what a form on another site would send) or from another origin.
    status, body = served.json(f"/api/groups/{group['id']}/name", json.dumps({"name": "X"}).encode(),
                               headers={"Content-Type": "application/json"})
    assert status == 403 and "X-Requested-With" in body["error"]
    status, body = served.json(f"/api/groups/{group['id']}/name", {"name": "X"},
                               headers={"Origin": "http://evil.example"})
    assert status == 403 and "another site" in body["error"]
    status, body = served.json("/api/state", headers={"Host": "rebound.example"})  # DNS rebinding
    assert status == 403
    assert served.request("/api/state", b"", method="POST", headers=CSRF)[0] == 405
    assert served.json("/api/state")[1] == before


def test_two_browsers_naming_one_group_at_once_name_it_once(served):
    group = _stranger_group(served)
    results = []
    start = threading.Barrier(2)

    def name(who: str) -> None:
        start.wait()
        results.append((who, *served.json(f"/api/groups/{group['id']}/name", {"name": who})))

    threads = [threading.Thread(target=name, args=(who,)) for who in ("Colin", "Mr Powell")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(status for _, status, _ in results)
    assert statuses == [200, 404], results
    winner = next(who for who, status, _ in results if status == 200)
    loser = next(body for _, status, body in results if status == 404)
    assert "named or added to someone meanwhile" in loser["error"]
    people = {p["name"]: p for p in served.json("/api/state")[1]["people"]}
    assert set(people) == {KNOWN, winner} and people[winner]["embeddings"] == 3


def test_a_wrong_enrolled_face_is_excluded_from_the_page(served):
    person = served.json("/api/state")[1]["people"][0]
    sample = person["samples"][0]["id"]
    status, body = served.json("/api/people/exclude-sample", {"name": person["name"], "sample": 99999})
    assert status == 404 and "has no enrolled face 99999" in body["error"]
    status, body = served.json("/api/people/exclude-sample", {"name": person["name"], "sample": "first"})
    assert status == 400 and "'sample'" in body["error"]
    status, body = served.json("/api/people/exclude-sample", {"name": person["name"], "sample": sample})
    assert status == 200 and body["embeddings"] == person["embeddings"] - 1
    assert served.request(f"/api/samples/{sample}.jpg")[0] == 404  # no longer one of their faces


def test_the_page_reads_what_a_running_doorface_run_writes(served, cli_env):
    """Both at once on one gallery file (SQLite WAL): the run records while the page is read and changed."""
    before = served.json("/api/state")[1]
    run = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(served.config)], env=cli_env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        renamed = False
        while run.poll() is None:
            status, state = served.json("/api/state")
            assert status == 200, state
            if not renamed:  # a change from the page while the run writes
                assert served.json("/api/people/rename", {"name": KNOWN, "new_name": "Tony"})[0] == 200
                renamed = True
            time.sleep(0.2)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    after = served.json("/api/state")[1]
    assert len(after["visits"]) == len(before["visits"]) + 4
    assert _stranger_group(served)["visits"] == 6  # the second run's three visits joined the same group
    assert [p["name"] for p in after["people"]] == ["Tony"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width × height, with a few bytes of pixel data: tiny on disk, huge once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000))) + \
        chunk(b"IEND", b"")


def test_uploads_too_big_in_bytes_or_in_pixels_are_refused_before_decoding(served, shared_data):
    status, body = served.json("/api/people/photo?name=Anna", bytes(9_000_000),
                               headers={"Content-Type": "image/jpeg", **CSRF})
    assert status == 413 and "review.max_upload_mb" in body["error"]
    status, body = served.json("/api/people/photo?name=Anna", _png_header_only(20000, 20000),
                               headers={"Content-Type": "image/png", **CSRF})
    assert status == 400 and "20000x20000" in body["error"] and "before decoding" in body["error"]
    status, body = served.json("/api/people/photo?name=Anna", b"not an image",
                               headers={"Content-Type": "image/jpeg", **CSRF})
    assert status == 400 and "not a decodable image" in body["error"]
    assert "Anna" not in [p["name"] for p in served.json("/api/state")[1]["people"]]
    photo = (shared_data / "lfw" / "images" / "Serena_Williams" / "Serena_Williams_0001.jpg").read_bytes()
    status, body = served.json("/api/people/photo?name=Serena", photo, headers={"Content-Type": "image/jpeg", **CSRF})
    assert status == 200 and body == {"person": "Serena", "embeddings": 1}


def test_off_loopback_it_needs_a_token_and_every_request_carries_it(tmp_path, logged, cli_env):
    _, config = logged
    refused = doorface("serve", "--config", str(config), "--host", "0.0.0.0", "--port", str(free_port()),
                       env=cli_env, timeout=60)
    assert refused.returncode == 2 and "needs a token" in refused.stderr
    token = "s3cret-token-for-the-test"
    server = Served(config, {**cli_env, "DOORFACE_REVIEW_TOKEN": token}, "--host", "0.0.0.0")
    try:
        status, body = server.json("/api/state")
        assert status == 401 and "token" in body["error"]
        assert server.json("/api/state", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert server.json("/api/state", headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert server.json("/?token=wrong")[0] == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        opener.open(f"{server.url}/?token={token}", timeout=10).read()
        with opener.open(f"{server.url}/api/state", timeout=10) as response:  # the cookie the login set
            assert response.status == 200
    finally:
        server.stop()


def test_a_person_names_the_stranger_in_the_browser_and_the_next_visit_is_recognized(served, cli_env):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (install.sh --dev installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    shots = os.environ.get("DOORFACE_SCREENSHOTS")
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(served.url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
        visits = driver.find_elements(By.CSS_SELECTOR, ".visit")
        assert len(visits) == 4
        assert all(img.get_property("naturalWidth") > 0 for img in driver.find_elements(By.CSS_SELECTOR, ".visit img"))
        if shots:
            driver.save_screenshot(str(Path(shots) / "review-visits.png"))
        driver.find_element(By.CSS_SELECTOR, '.tab[data-tab="groups"]').click()
        group = _stranger_group(served)
        card = driver.find_element(By.CSS_SELECTOR, f'.group[data-group="{group["id"]}"]')
        assert "3 visits" in card.text
        if shots:
            driver.save_screenshot(str(Path(shots) / "review-unknown.png"))
        card.find_element(By.CSS_SELECTOR, ".name-input").send_keys(STRANGER)
        card.find_element(By.CSS_SELECTOR, ".name-button").click()
        wait.until(seen.text_to_be_present_in_element((By.ID, "message"), f"is now {STRANGER}"))
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, f'.group[data-group="{group["id"]}"]'))
        # Naming it again from a page that has not refreshed: the server's answer is shown, nothing changes.
        driver.find_element(By.CSS_SELECTOR, '.tab[data-tab="people"]').click()
        person = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'.person[data-name="{STRANGER}"]'))
        assert len(person.find_elements(By.CSS_SELECTOR, ".faces img")) == 3
        if shots:
            driver.save_screenshot(str(Path(shots) / "review-people.png"))
    finally:
        driver.quit()
    served.stop()
    events = run_clip(served.config, cli_env)
    named = [e for e in events if e["event_type"] == "recognized" and e["name"] == STRANGER]
    assert len(named) == 3, events  # each of the stranger's visits, now by name
    assert [e["name"] for e in events if e["event_type"] == "recognized"].count(KNOWN) == 1
