"""Templates, acceptance rules and calibration of the matcher, on synthetic vectors and on real LFW embeddings."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from edge.detector import MtcnnDetector
from edge.embedder import Embedder, distance
from edge.gallery import Gallery, GalleryMismatchError
from edge.image_io import load_image
from edge.manifest import InputSpec, Manifest, ManifestError, ModelEntry
from edge.matcher import NO_MATCH, Calibration, Match, Matcher, person_template, robust_template, threshold_from_entry

KEY = "dlib_resnet"
# Until the manifest carries the lead's LFW fit: p(same) = 0.5 at distance ≈ 0.077, the far_1e-3 threshold.
CALIBRATION = Calibration(slope=-60.0, intercept=4.6)
LFW_PERSONS = ("George_W_Bush", "Colin_Powell", "Tony_Blair", "Jacques_Chirac", "Donald_Rumsfeld")
PER_PERSON = 5


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def around(center: np.ndarray, cosine_distance: float, seed: int, n: int = 1) -> np.ndarray:
    """n unit vectors at exactly ``cosine_distance`` from the unit vector ``center``, in random directions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        r = rng.normal(size=center.shape)
        r -= (r @ center) * center
        r /= np.linalg.norm(r)
        cos = 1.0 - cosine_distance
        out.append(cos * center + np.sqrt(1.0 - cos**2) * r)
    return np.asarray(out, dtype=np.float32)


def entry_with(fields: dict, key: str = KEY, sha256: str = "ab" * 32) -> ModelEntry:
    manifest_entry = {"file": f"{key}.tflite", "sha256": sha256, "task": "face_embedding",
                      "input": {"shape": [1, 150, 150, 3], "dtype": "int8", "mean": 127.5, "std": 128.0},
                      "embedding": {"dim": 8, "metric": "cosine"}, **fields}
    return ModelEntry(key, Path(f"/nonexistent/{key}.tflite"), sha256, "face_embedding",
                      InputSpec((1, 150, 150, 3), "int8", "RGB", 127.5, 128.0), manifest_entry)


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest.load()


@pytest.fixture(scope="module")
def lfw(shared_data, manifest) -> dict[str, np.ndarray]:
    """The first PER_PERSON single-face photos of each of LFW_PERSONS, embedded by the shipped int8 models."""
    detector = MtcnnDetector.from_manifest(manifest, num_threads=2)
    embedder = Embedder.from_manifest(KEY, manifest, num_threads=2)
    out = {}
    for person in LFW_PERSONS:
        vectors = []
        for path in sorted((shared_data / "lfw" / "images" / person).glob("*.jpg")):
            image = load_image(path)
            faces = detector(image)
            if len(faces) == 1:
                vectors.append(embedder(image, faces.landmarks)[0])
            if len(vectors) == PER_PERSON:
                break
        assert len(vectors) == PER_PERSON, person
        out[person] = np.stack(vectors)
    return out


# --- robust_template -------------------------------------------------------------------------------------------------


def test_template_of_a_clean_set_is_its_normalised_mean():
    rng = np.random.default_rng(0)
    center = unit(rng.normal(size=16))
    vectors = around(center, 0.02, seed=1, n=6)
    template = robust_template(vectors)
    assert template.inliers.all() and template.embeddings.shape == (6, 16)
    np.testing.assert_allclose(template.vector, unit(vectors.mean(axis=0)), atol=1e-6)
    assert np.isclose(np.linalg.norm(template.vector), 1.0)
    assert not template.vector.flags.writeable


@pytest.mark.parametrize("k", [1, 2])
def test_one_or_two_embeddings_are_kept_whole(k):
    vectors = unit(np.random.default_rng(k).normal(size=(k, 16)))  # even two unrelated vectors
    template = robust_template(vectors, max_cutoff=0.01)
    assert template.inliers.all()


def test_an_injected_outlier_is_rejected_synthetic():
    rng = np.random.default_rng(3)
    center = unit(rng.normal(size=32))
    own = around(center, 0.03, seed=4, n=5)
    stranger = around(center, 0.25, seed=5)
    template = robust_template(np.vstack([own[:2], stranger, own[2:]]))
    assert template.inliers.tolist() == [True, True, False, True, True, True]
    assert template.embeddings.shape == (5, 32)
    assert float(distance(template.vector, center)[0, 0]) < 0.01


def test_at_least_half_is_kept():
    vectors = unit(np.random.default_rng(6).normal(size=(7, 16)))  # all mutually far apart
    template = robust_template(vectors, max_cutoff=0.01)
    assert template.inliers.sum() == 4


def test_min_cutoff_keeps_ordinary_variation_of_a_tight_set():
    center = unit(np.random.default_rng(7).normal(size=32))
    vectors = np.vstack([around(center, 0.001, seed=8, n=6), around(center, 0.02, seed=9)])
    assert not robust_template(vectors).inliers[-1]  # the MAD of a near-identical set is tiny
    assert robust_template(vectors, min_cutoff=0.03).inliers.all()


def test_a_strangers_photo_among_real_ones_is_rejected(lfw, manifest):
    """One Chirac photo enrolled by mistake among Bush's: set aside for every set size, Bush's own photos kept."""
    threshold = threshold_from_entry(manifest.entry(KEY))
    for k in (2, 3, 5):
        for stranger in ("Jacques_Chirac", "Donald_Rumsfeld", "Colin_Powell"):
            vectors = np.vstack([lfw["George_W_Bush"][:k], lfw[stranger][:1]])
            template = person_template(vectors, metric="cosine", threshold=threshold)
            assert template.inliers.tolist() == [True] * k + [False], (k, stranger)


def test_template_input_errors():
    with pytest.raises(ValueError, match="shape"):
        robust_template(np.zeros((0, 8)))
    with pytest.raises(ValueError, match="finite"):
        robust_template(np.full((2, 8), np.nan))


# --- Calibration ------------------------------------------------------------------------------------------------------


def test_probability_decreases_with_distance():
    distances = np.linspace(0.0, 2.0, 201)
    p = CALIBRATION.probability(distances)
    assert isinstance(p, np.ndarray) and p.shape == distances.shape
    assert np.all(np.diff(p) < 0)
    assert np.all((p >= 0) & (p <= 1))
    assert isinstance(CALIBRATION.probability(0.05), float)
    assert CALIBRATION.probability(0.0) == pytest.approx(1 / (1 + np.exp(-4.6)))
    assert CALIBRATION.probability(4.6 / 60) == pytest.approx(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Calibration(-1e6, 0.0).probability(1e6) == 0.0  # no overflow warning at the extremes
        assert Calibration(-1e6, 0.0).probability(-1e6) == 1.0


@pytest.mark.parametrize("slope,intercept", [(0.0, 1.0), (5.0, 1.0), (float("nan"), 1.0), (-1.0, float("inf"))])
def test_calibration_is_validated(slope, intercept):
    with pytest.raises(ValueError):
        Calibration(slope, intercept)


def test_calibration_from_entry():
    entry = entry_with({"thresholds": {"far_1e-3": 0.08, "calibration": {"slope": -55.5, "intercept": 4.25}}})
    assert Calibration.from_entry(entry) == Calibration(-55.5, 4.25)


@pytest.mark.parametrize("thresholds", [None, {"far_1e-3": 0.08}, {"calibration": {"slope": -5}},
                                        {"calibration": {"slope": 3.0, "intercept": 1.0}},
                                        {"calibration": "fit me"}])
def test_missing_or_bad_calibration_says_how_to_make_one(thresholds):
    entry = entry_with({} if thresholds is None else {"thresholds": thresholds}, key="my_model")
    with pytest.raises(ManifestError, match=r"run `doorface-convert evaluate lfw` to calibrate model my_model"):
        Calibration.from_entry(entry)


def test_calibration_from_a_manifest_file(tmp_path, manifest):
    """Read back through Manifest.load, the way the runtime gets it."""
    raw = json.loads(manifest.path.read_text(encoding="utf-8"))
    raw["models"][KEY].setdefault("thresholds", {})["calibration"] = {"slope": -61.0, "intercept": 4.7}
    (tmp_path / "manifest.json").write_text(json.dumps(raw), encoding="utf-8")
    assert Calibration.from_entry(Manifest.load(tmp_path).entry(KEY)) == Calibration(-61.0, 4.7)


# --- Matcher rules ----------------------------------------------------------------------------------------------------


def two_person_matcher(gap_a: float, gap_b: float, margin: float = 0.02, threshold: float = 0.08):
    """Persons A and B, three tight embeddings each, and a query at cosine distance gap_a from A's centre."""
    rng = np.random.default_rng(11)
    a, b = unit(rng.normal(size=64)), unit(rng.normal(size=64))
    gallery = {"A": around(a, 0.005, 12, 3), "B": around(b, 0.005, 13, 3)}
    return Matcher(gallery, metric="cosine", threshold=threshold, margin=margin, calibration=CALIBRATION), a, b


def test_threshold_rule():
    matcher, a, _ = two_person_matcher(0, 0)
    near, far = around(a, 0.03, 20), around(a, 0.2, 21)
    got_near, got_far = matcher.match(np.vstack([near, far]))
    assert got_near.name == "A" and got_near.best == "A" and got_near.accepted
    assert got_near.distance == pytest.approx(0.03, abs=0.01)
    assert got_near.second_distance > 0.5 and got_near.gap > 0.5
    assert got_far.name is None and got_far.best == "A" and not got_far.accepted
    assert got_far.distance > matcher.threshold
    assert got_near.probability > got_far.probability
    assert got_near.probability == pytest.approx(CALIBRATION.probability(got_near.distance))


def test_margin_rule_for_look_alikes():
    """A query about as close to two persons is left unrecognised, though both are under the threshold."""
    rng = np.random.default_rng(30)
    a = unit(rng.normal(size=64))
    b = around(a, 0.04, 31)[0]  # two look-alike relatives
    query = unit(a + b)  # ~0.01 from both
    query = unit(query + 0.2 * (a - query))  # a little closer to A
    gallery = {"A": a[None], "B": b[None]}
    strict = Matcher(gallery, metric="cosine", threshold=0.08, margin=0.02, calibration=CALIBRATION)
    got = strict.match(query)[0]
    assert got.distance < got.second_distance < strict.threshold
    assert got.second_distance - got.distance < 0.02
    assert got.name is None and got.best == "A"
    lenient = Matcher(gallery, metric="cosine", threshold=0.08, margin=0.0, calibration=CALIBRATION)
    assert lenient.match(query)[0].name == "A"
    alone = Matcher({"A": a[None]}, metric="cosine", threshold=0.08, margin=0.02, calibration=CALIBRATION)
    only = alone.match(query)[0]
    assert only.name == "A" and only.second_distance is None and only.gap is None


def test_person_distance_is_the_closest_of_template_and_inliers():
    rng = np.random.default_rng(40)
    center = unit(rng.normal(size=64))
    own = around(center, 0.04, 41, 4)
    matcher = Matcher({"A": own}, metric="cosine", threshold=0.08, calibration=CALIBRATION)
    query = around(own[0], 0.001, 42)  # nearly a copy of one enrolled photo
    template_distance = float(distance(query, matcher.templates["A"].vector)[0, 0])
    got = matcher.match(query)[0]
    assert got.distance < template_distance and got.distance == pytest.approx(0.001, abs=2e-3)


def test_empty_gallery_and_empty_input():
    matcher = Matcher({}, metric="cosine", threshold=0.08, calibration=CALIBRATION)
    assert len(matcher) == 0 and matcher.dim is None
    got = matcher.match(unit(np.ones((3, 8))))
    assert got == [NO_MATCH] * 3
    assert got[0] == Match(None, None, None, 0.0, None) and not got[0].accepted
    assert matcher.match(np.zeros((0, 8))) == []
    assert matcher.distances(unit(np.ones((2, 8)))).shape == (2, 0)
    filled, _, _ = two_person_matcher(0, 0)
    assert filled.match(np.zeros((0, 64), np.float32)) == []


def test_match_is_vectorised_and_agrees_row_by_row(lfw):
    gallery = {p: lfw[p][:3] for p in ("George_W_Bush", "Colin_Powell", "Tony_Blair")}
    matcher = Matcher(gallery, metric="cosine", threshold=0.0767, calibration=CALIBRATION)
    queries = np.vstack([lfw[p][3:] for p in LFW_PERSONS])
    together = matcher.match(queries)
    one_by_one = [matcher.match(q)[0] for q in queries]
    assert [(m.name, m.best) for m in together] == [(m.name, m.best) for m in one_by_one]
    # float32 products differ in the last bits (BLAS picks its kernel by the batch shape); the calibrated
    # probability's slope near the threshold multiplies a 1e-7 distance difference by ~20.
    for field, atol in (("distance", 1e-6), ("second_distance", 1e-6), ("probability", 1e-5)):
        np.testing.assert_allclose([getattr(m, field) for m in together], [getattr(m, field) for m in one_by_one],
                                   atol=atol)
    names = [m.name for m in together]
    assert names == ["George_W_Bush"] * 2 + ["Colin_Powell"] * 2 + ["Tony_Blair"] * 2 + [None] * 4
    per_person = matcher.distances(queries)
    assert per_person.shape == (len(queries), 3) and np.all(per_person >= 0)
    np.testing.assert_allclose([m.distance for m in together], per_person.min(axis=1), atol=1e-6)


def test_euclidean_metric_orders_as_cosine(lfw):
    gallery = {p: lfw[p][:3] for p in ("George_W_Bush", "Colin_Powell")}
    queries = np.vstack([lfw["George_W_Bush"][3:], lfw["Colin_Powell"][3:]])
    cos = Matcher(gallery, metric="cosine", threshold=0.0767, calibration=CALIBRATION).match(queries)
    euc = Matcher(gallery, metric="euclidean", threshold=np.sqrt(2 * 0.0767), calibration=CALIBRATION).match(queries)
    assert [m.name for m in cos] == [m.name for m in euc] == ["George_W_Bush"] * 2 + ["Colin_Powell"] * 2
    np.testing.assert_allclose([m.distance for m in euc], np.sqrt(2 * np.array([m.distance for m in cos])),
                               atol=1e-3)


def test_matcher_input_errors():
    with pytest.raises(ValueError, match="metric"):
        Matcher({}, metric="manhattan", threshold=0.1, calibration=CALIBRATION)
    with pytest.raises(ValueError, match="threshold"):
        Matcher({}, metric="cosine", threshold=0.0, calibration=CALIBRATION)
    with pytest.raises(ValueError, match="margin"):
        Matcher({}, metric="cosine", threshold=0.1, margin=-0.1, calibration=CALIBRATION)
    with pytest.raises(ValueError, match="different dimensions"):
        Matcher({"A": np.ones((1, 8)), "B": np.ones((1, 16))}, metric="cosine", threshold=0.1,
                calibration=CALIBRATION)
    matcher = Matcher({"A": np.ones((1, 8))}, metric="cosine", threshold=0.1, calibration=CALIBRATION)
    with pytest.raises(ValueError, match="different models"):
        matcher.match(np.ones((2, 16)))


# --- from the manifest and the gallery --------------------------------------------------------------------------------


def open_for(path: Path, entry: ModelEntry) -> Gallery:
    return Gallery.open(path, embedder_key=entry.key, embedder_sha256=entry.sha256,
                        dim=int(entry.fields["embedding"]["dim"]), metric="cosine")


@pytest.mark.parametrize("kind", ["far_1e-3", "best_accuracy"])
def test_threshold_comes_from_the_manifest(tmp_path, manifest, lfw, kind):
    entry = manifest.entry(KEY)
    with open_for(tmp_path / "g.sqlite", entry) as gallery:
        gallery.add("George W Bush", lfw["George_W_Bush"][:3], ["1", "2", "3"])
        gallery.add("Colin Powell", lfw["Colin_Powell"][:3], ["1", "2", "3"])
        matcher = Matcher.from_gallery(gallery, entry, threshold_kind=kind, calibration=CALIBRATION)
    assert matcher.threshold == entry.fields["thresholds"][kind]
    assert 0.05 < matcher.threshold < 0.12
    assert (matcher.metric, matcher.margin, matcher.names) == ("cosine", 0.02, ("Colin Powell", "George W Bush"))
    got = matcher.match(np.vstack([lfw["George_W_Bush"][3:], lfw["Jacques_Chirac"]]))
    assert [m.name for m in got] == ["George W Bush"] * 2 + [None] * PER_PERSON


def test_missing_threshold_says_how_to_make_one():
    entry = entry_with({"thresholds": {"best_accuracy": 0.09}}, key="new_model")
    assert threshold_from_entry(entry, "best_accuracy") == 0.09
    with pytest.raises(ManifestError, match=r"no 'far_1e-3' threshold.*doorface-convert evaluate lfw.*new_model"):
        threshold_from_entry(entry)
    with pytest.raises(ManifestError, match="bad 'far_1e-3' threshold"):
        threshold_from_entry(entry_with({"thresholds": {"far_1e-3": "low"}}))
    with pytest.raises(ManifestError, match="doorface-convert evaluate lfw"):
        threshold_from_entry(entry_with({}))


def test_from_gallery_needs_the_calibration_and_the_same_model(tmp_path, manifest):
    entry = manifest.entry(KEY)
    with open_for(tmp_path / "g.sqlite", entry) as gallery:
        if "calibration" not in entry.fields.get("thresholds", {}):
            with pytest.raises(ManifestError, match="doorface-convert evaluate lfw"):
                Matcher.from_gallery(gallery, entry)
        else:
            assert Matcher.from_gallery(gallery, entry).calibration == Calibration.from_entry(entry)
        other = manifest.entry("mobilefacenet")
        with pytest.raises(GalleryMismatchError, match="set embedder.model back to dlib_resnet"):
            Matcher.from_gallery(gallery, other, calibration=CALIBRATION)


def test_a_face_marked_not_them_moves_the_boundary_for_that_person_only():
    anna = unit(np.random.default_rng(1).normal(size=8))
    anna_faces = around(anna, 0.05, seed=2, n=3)
    lookalike = around(anna, 0.25, seed=3)[0]  # under the threshold: taken for Anna ...
    threshold = 0.3
    plain = Matcher({"Anna": anna_faces}, metric="cosine", threshold=threshold, calibration=CALIBRATION)
    assert plain.match(lookalike)[0].name == "Anna"
    corrected = Matcher({"Anna": anna_faces}, metric="cosine", threshold=threshold, calibration=CALIBRATION,
                        exclusions={"Anna": lookalike[None]})
    assert corrected.match(lookalike)[0].name is None  # ... until marked not Anna
    assert corrected.match(lookalike)[0].best == "Anna"
    assert corrected.match(anna_faces)[0].name == "Anna"  # Anna herself still is
    # An enrolled face that is the excluded one (a wrong face enrolled) is set aside from Anna's template.
    polluted = Matcher({"Anna": np.vstack([anna_faces, lookalike])}, metric="cosine", threshold=threshold,
                       calibration=CALIBRATION, exclusions={"Anna": lookalike[None]})
    assert len(polluted.templates["Anna"].embeddings) == 3
