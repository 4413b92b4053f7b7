"""NNS1/NNS2 (:mod:`research.nns`) and their training (:mod:`research.train_nns` and the modules it uses).

The architectures must fit FaceNet's budgets with int8/EdgeTPU-friendly layers only; a tiny NNS2 trained for a few
steps on real aligned train-faces (4 identities × 8) must lower its loss, and its int8 export must parse as fully
int8 and embed through the runtime's :class:`edge.embedder.Embedder` from a manifest entry written by the trainer.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from converters import datasets
from converters.quantize import tflite_tools
from edge.manifest import Manifest
from research import landmark_check, nns, train_config
from research import train_nns as T
from research.augment import augment, mirror
from research.batches import batches, identity_table
from research.data import CACHE_SUBDIR, align_all, data_digest, normalise, split_identities
from research.export import export_models, int8_loss_warning, manifest_entries, run_tflite
from research.losses import semi_hard_triplet_loss
from research.prepare import prepare
from research.teacher import cached_teacher_views, teacher_embeddings

TINY_INPUT = (64, 56, 3)  # (h, w, c)
TINY_WIDTH = 0.25
# NNS2's stem, first reduction and first Inception module: every layer kind, a fifth of the layers (tracing and
# TFLite conversion time grow with the layer count, ~20 s for the full NNS2 graph).
TINY_ARCH = dataclasses.replace(nns.NNS2, name="tiny", modules=nns.NNS2.modules[:2])
TINY_IDENTITIES = 4
TINY_PER_IDENTITY = 8
TINY_STEPS = 25
LOSS_WINDOW = 5  # mean of the first vs the last this many steps
TEACHER_KEY = "mobilefacenet"


@pytest.fixture(scope="module", params=sorted(nns.ARCHITECTURES))
def full_model(request):
    return request.param, nns.build(nns.ARCHITECTURES[request.param])


@pytest.mark.convert
def test_architectures_fit_the_flop_budgets(full_model):
    name, model = full_model
    flops = nns.count_flops(model)
    assert flops == 2 * nns.count_macs(model)
    assert flops <= nns.MAX_FLOPS[name], f"{name}: {flops / 1e6:.1f}M FLOPs"
    assert flops >= 0.8 * nns.MAX_FLOPS[name], f"{name} leaves most of its budget unused"
    assert model.output.shape[-1] == nns.EMBEDDING_DIM
    assert tuple(model.input.shape[1:]) == nns.ARCHITECTURES[name].input_shape


@pytest.mark.convert
def test_architectures_use_int8_friendly_layers_only(full_model):
    name, model = full_model
    assert nns.layer_types(model) <= nns.ALLOWED_LAYERS, nns.layer_types(model) - nns.ALLOWED_LAYERS
    for layer in model.layers:
        if type(layer).__name__ == "ReLU":
            assert layer.max_value == nns.RELU_CAP, layer.name


def test_variants_ship_under_their_class_key():
    assert {a.key for a in nns.ARCHITECTURES.values()} == {"nns1", "nns2"}
    assert nns.ARCHITECTURES["nns2fc"].key == "nns2" and nns.MAX_FLOPS["nns2fc"] == nns.NNS2_MAX_FLOPS


def test_architecture_rejects_an_unknown_head():
    with pytest.raises(ValueError, match="head must be one of"):
        dataclasses.replace(nns.NNS2, head="average")


@pytest.mark.convert
def test_count_macs_by_hand():
    import keras

    inputs = keras.Input((8, 8, 3), batch_size=1)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # 4×4×4 outputs × 27
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 4×4×4 outputs × 9
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5)(x)  # 64 × 5
    model = keras.Model(inputs, outputs)
    assert nns.count_macs(model) == 64 * 27 + 64 * 9 + 64 * 5


def test_alignment_template_scales_arcface():
    square = nns.alignment_template((112, 112))
    assert np.allclose(square, np.round(np.asarray(nns.ARCFACE_112_TEMPLATE), 4))
    tall = nns.alignment_template((116, 140))
    eyes = tall[1, 0] - tall[0, 0]
    assert eyes == pytest.approx((73.5318 - 38.2946) * 116 / 112, abs=1e-3)
    assert tall[:, 1].mean() == pytest.approx(square[:, 1].mean() * 116 / 112 + (140 - 116) / 2, abs=1e-3)


def test_identity_split_is_disjoint_and_nested():
    identities = [f"id{i // 5}" for i in range(500)]
    full = split_identities(identities, 0.05, 1.0, seed=0)
    half = split_identities(identities, 0.05, 0.5, seed=0)
    ids = np.asarray(identities)
    assert not set(ids[full.train]) & set(ids[full.val])
    assert set(ids[half.val]) == set(ids[full.val])
    assert set(ids[half.train]) < set(ids[full.train])
    assert full.val_identities == 5 and full.train_identities == 95


@pytest.mark.convert
def test_semi_hard_triplet_loss_matches_a_loop():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.repeat(np.arange(4), 3).astype(np.int32)
    margin = 0.2
    loss, active = semi_hard_triplet_loss(tf.constant(emb), tf.constant(labels), margin)
    d = np.maximum(2 - 2 * emb @ emb.T, 0)
    expected = []
    for a in range(12):
        for p in range(12):
            if a == p or labels[a] != labels[p]:
                continue
            negatives = d[a][labels != labels[a]]
            farther = negatives[negatives > d[a, p]]
            d_neg = farther.min() if len(farther) else negatives.max()
            expected.append(max(d[a, p] - d_neg + margin, 0.0))
    assert float(loss) == pytest.approx(np.mean(expected), rel=1e-4)
    assert float(active) == pytest.approx(np.mean(np.asarray(expected) > 0), rel=1e-6)


def test_augment_keeps_shape_and_changes_pixels():
    rng = np.random.default_rng(1)
    chip = rng.integers(0, 256, (140, 116, 3), dtype=np.uint8)
    outs = [augment(chip, rng, train_config.Augmentation()) for _ in range(4)]
    assert all(o.shape == chip.shape and o.dtype == np.uint8 for o in outs)
    assert all(np.abs(o.astype(int) - chip).mean() > 1 for o in outs)


def test_config_lists_the_architectures_nns_builds():
    assert set(train_config.ARCHITECTURE_NAMES) == set(nns.ARCHITECTURES)


def test_resume_names_the_recipe_options_it_would_ignore():
    stored = train_config.TrainConfig(arch="nns1", epochs=60, dropout=0.2)
    # Only the length and the speed may change; options left at their defaults or equal to the run's are no conflict.
    assert train_config.resume_conflicts(stored, train_config.TrainConfig()) == []
    assert train_config.resume_conflicts(stored, train_config.TrainConfig(arch="nns1", epochs=80, threads=1)) == []
    asked = train_config.TrainConfig(learning_rate=1e-3, dropout=0.0,
                                     augmentation=train_config.AUGMENTATIONS["light"])
    assert train_config.resume_conflicts(stored, asked) == [
        "--lr 0.001 (the run has 0.003)", "--dropout 0.0 (the run has 0.2)",
        "--augmentation light (the run has door)"]
    # The steps per epoch are part of the recipe: a resume keeps the run's, so an iso-step run stays one.
    assert train_config.resume_conflicts(stored, train_config.TrainConfig(steps_per_epoch=148)) == [
        "--steps-per-epoch 148 (the run has None)"]


def test_resume_with_ignored_options_fails_before_touching_the_run(tmp_path):
    run_dir = tmp_path / "nns1-run"
    run_dir.mkdir()
    config = run_dir / "config.json"
    config.write_text(json.dumps({"config": train_config.TrainConfig(arch="nns1").to_json()}), encoding="utf-8")
    before = config.read_bytes()
    with pytest.raises(ValueError, match=r"--dropout 0\.0 \(the run has 0\.2\).*start a new run"):
        T.run(train_config.TrainConfig(arch="nns1", dropout=0.0), resume=run_dir, models=tmp_path / "none")
    assert config.read_bytes() == before and sorted(p.name for p in run_dir.iterdir()) == ["config.json"]


def test_init_from_a_run_that_does_not_fit_fails_before_a_run_folder_is_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # new runs would appear under ./runs
    source = tmp_path / "nns1-source"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"config": train_config.TrainConfig(arch="nns1").to_json()}),
                                        encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"--init-from .*checkpoint\.npz not found"):
        T.run(train_config.TrainConfig(arch="nns1", init_from=str(source)), models=tmp_path / "none")
    np.savez(source / T.CHECKPOINT_NAME, epoch=np.asarray(80))
    for other in (train_config.TrainConfig(arch="nns2", init_from=str(source)),
                  train_config.TrainConfig(arch="nns1", seed=1, init_from=str(source))):
        with pytest.raises(ValueError, match=r"--init-from .* trained with (arch 'nns1'|seed 0)"):
            T.run(other, models=tmp_path / "none")
    assert not (tmp_path / "runs").exists()
    init = T.init_source(train_config.TrainConfig(arch="nns1", teacher_views=8, init_from=str(source)))
    assert init["run"] == "nns1-source" and init["epoch"] == 80 and len(init["checkpoint_sha256"]) == 64


def test_mirror_moves_the_landmarks_with_the_pixels():
    image = np.zeros((40, 30, 3), np.uint8)
    landmarks = np.array([[8.0, 12.0], [20.0, 12.0], [14.0, 20.0], [10.0, 28.0], [19.0, 28.0]])
    for x, y in landmarks.astype(int):
        image[y, x] = 255
    flipped, moved = mirror(image, landmarks)
    assert all(flipped[int(y), int(x)].all() for x, y in moved)  # each point still sits on its pixel
    assert moved[0, 0] < moved[1, 0] and moved[3, 0] < moved[4, 0]  # "left" is still the image's left
    again, back = mirror(flipped, moved)
    assert np.array_equal(again, image) and np.allclose(back, landmarks)


def test_command_line_config_round_trips_through_config_json():
    import argparse

    parser = argparse.ArgumentParser()
    train_config.add_arguments(parser)
    cfg = train_config.config_from_args(parser.parse_args(["--arch", "nns1", "--augmentation", "light",
                                                           "--epochs", "3", "--dropout", "0",
                                                           "--steps-per-epoch", "148", "--teacher-views", "8",
                                                           "--triplet-weight", "0", "--warmup-epochs", "0.5"]))
    assert cfg.warmup_epochs == 0.5
    assert cfg.steps_per_epoch == 148 and cfg.teacher_views == 8 and cfg.triplet_weight == 0.0
    assert cfg.augmentation == train_config.AUGMENTATIONS["light"] != train_config.AUGMENTATIONS["door"]
    assert cfg.dropout == 0.0
    stored = json.loads(json.dumps(cfg.to_json()))  # as written to and read from a run's config.json
    assert train_config.TrainConfig.from_json(stored) == cfg
    # Runs from before --dropout existed trained with the then-fixed 0.2, which is still the default.
    older = {k: v for k, v in stored.items() if k not in ("dropout", "steps_per_epoch", "teacher_views")}
    assert train_config.TrainConfig.from_json(older).dropout == 0.2
    assert train_config.TrainConfig.from_json(older).steps_per_epoch is None  # faces / batch, as they trained
    assert train_config.TrainConfig.from_json(older).teacher_views == 0  # the clean faces' targets
    with pytest.raises(ValueError, match="--steps-per-epoch"):
        dataclasses.replace(cfg, steps_per_epoch=0).validate()
    with pytest.raises(ValueError, match="--triplet-weight must be >= 0"):
        dataclasses.replace(cfg, triplet_weight=-1.0).validate()
    with pytest.raises(ValueError, match="--teacher-views must be >= 0"):
        dataclasses.replace(cfg, teacher_views=-1).validate()
    with pytest.raises(ValueError, match="--teacher-flip and --teacher-views exclude each other"):
        dataclasses.replace(cfg, teacher_views=8, teacher_flip=True).validate()
    with pytest.raises(ValueError, match="--dropout"):
        dataclasses.replace(cfg, dropout=1.0).validate()
    with pytest.raises(ValueError, match="--warmup-epochs must be >= 0 and less than --epochs 3"):
        dataclasses.replace(cfg, warmup_epochs=3.0).validate()
    with pytest.raises(ValueError, match="--warmup-epochs"):
        dataclasses.replace(cfg, warmup_epochs=-1.0).validate()
    with pytest.raises(ValueError, match="unknown fields"):
        train_config.TrainConfig.from_json({**stored, "momentum": 0.9})
    with pytest.raises(SystemExit):
        parser.parse_args(["--augmentation", "heavy"])


@pytest.mark.convert
def test_checkpoint_round_trip(tmp_path):
    cfg = train_config.TrainConfig(width=TINY_WIDTH)
    models = []
    for _ in range(2):
        student = nns.build(TINY_ARCH, TINY_INPUT, width=TINY_WIDTH)
        head = T.make_head(8)
        optimizer = T.make_optimizer(cfg, 10)
        optimizer.build(student.trainable_variables + head.trainable_variables)
        models.append((student, head, optimizer))
    (s1, h1, o1), (s2, h2, o2) = models
    o1.iterations.assign(7)
    T.save_checkpoint(tmp_path / T.CHECKPOINT_NAME, s1, h1, o1, epoch=3)
    assert T.load_checkpoint(tmp_path / T.CHECKPOINT_NAME, s2, h2, o2) == 3
    assert int(o2.iterations.numpy()) == 7
    for a, b in zip(s1.get_weights() + h1.get_weights(), s2.get_weights() + h2.get_weights()):
        np.testing.assert_array_equal(a, b)
    # --init-from takes the weights alone, into a fresh optimizer; a model of another width does not fit.
    fresh, fresh_head = nns.build(TINY_ARCH, TINY_INPUT, width=TINY_WIDTH), T.make_head(8)
    assert T.load_weights(tmp_path / T.CHECKPOINT_NAME, fresh, fresh_head) == 3
    for a, b in zip(s1.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="do not fit this model"):
        T.load_weights(tmp_path / T.CHECKPOINT_NAME, nns.build(TINY_ARCH, TINY_INPUT, width=0.5), T.make_head(8))


@pytest.fixture(scope="module")
def tiny_faces(shared_data):
    """4 identities × 8 real train-faces rows (the first identities with at least 8 faces)."""
    faces = datasets.load_train_faces(shared_data / "train-faces")
    by_identity: dict = {}
    for face in faces:
        by_identity.setdefault(face.identity, []).append(face)
    chosen = [group[:TINY_PER_IDENTITY] for group in by_identity.values() if len(group) >= TINY_PER_IDENTITY]
    return [face for group in chosen[:TINY_IDENTITIES] for face in group]


def test_the_teacher_sees_a_mirrored_face_as_the_same_face(tiny_faces):
    """The mirror's landmarks must be relabelled for the alignment to frame it upright: the teacher then embeds
    it close to the original, and well above the cosine it gives another person."""
    entry = Manifest.load().entry(TEACHER_KEY)
    faces = tiny_faces[::TINY_PER_IDENTITY]  # one face of each identity
    plain = teacher_embeddings(faces, entry, num_threads=1)
    mirrored = teacher_embeddings(faces, entry, num_threads=1, mirrored=True)
    same = np.sum(plain * mirrored, axis=1)
    others = plain @ plain.T
    assert same.min() > 0.7, same
    assert same.min() > others[~np.eye(len(faces), dtype=bool)].max(), (same, others)


def test_teacher_views_are_the_teachers_embedding_of_the_view_the_student_sees(tiny_faces, tmp_path, monkeypatch):
    """--teacher-views: each training batch image must be a re-rendering of a cached view, and its target the
    teacher's embedding of exactly that image (framed by the teacher's own template); views of a face must stay
    recognisable to the teacher; the second preparation reads the cache."""
    from edge.embedder import Embedder

    monkeypatch.setenv("DOORFACE_CACHE", str(tmp_path / "cache"))
    entry = Manifest.load().entry(TEACHER_KEY)
    size = (TINY_INPUT[1], TINY_INPUT[0])
    template = nns.alignment_template(size)
    chips = align_all(tiny_faces, template, size)
    aug, views = train_config.Augmentation(), 3
    digest = data_digest(tiny_faces)
    view_targets = cached_teacher_views(chips, template, entry, views, 0, aug, digest)
    assert view_targets.shape == (len(tiny_faces), views, 192)
    assert np.allclose(np.linalg.norm(view_targets, axis=2), 1.0, atol=1e-4)
    assert len(list((tmp_path / "cache" / CACHE_SUBDIR).glob("teacher-views-*.npz"))) == 1
    np.testing.assert_array_equal(cached_teacher_views(chips, template, entry, views, 0, aug, digest),
                                  view_targets)

    teacher = Embedder(entry, num_threads=1)
    labels = np.asarray([f.identity for f in tiny_faces])
    members, weights = identity_table(labels, np.arange(len(tiny_faces)))
    cfg = train_config.TrainConfig(batch_identities=TINY_IDENTITIES, per_identity=TINY_PER_IDENTITY,
                                   teacher_views=views)
    targets = teacher_embeddings(tiny_faces, entry, num_threads=1)  # the clean faces': ignored with views
    images, batch_targets, _ = next(batches(chips, targets, members, weights, cfg, 1, seed=5,
                                              view_targets=view_targets))
    pixels = np.clip(np.rint(images * nns.PIXEL_STD + nns.PIXEL_MEAN), 0, 255).astype(np.uint8)
    seen = teacher.embed_chips(np.stack([teacher.align(p, template) for p in pixels]))
    np.testing.assert_allclose(np.sum(seen * batch_targets, axis=1), 1.0, atol=1e-3)
    rows = view_targets.reshape(-1, view_targets.shape[2])
    assert all((rows == target).all(axis=1).any() for target in batch_targets)  # cached views' rows, not re-run

    # An augmented view is still its own person to the teacher: nearer its clean face than any other identity's.
    clean = teacher_embeddings(tiny_faces, entry, num_threads=1)
    to_clean = np.einsum("nvd,md->nvm", view_targets, clean)
    own = to_clean[np.arange(len(tiny_faces)), :, np.arange(len(tiny_faces))]
    other = labels[:, None] != labels[None, :]
    assert own.mean() > 0.7, own
    assert own.mean() > max(to_clean[i][:, other[i]].mean() for i in range(len(tiny_faces))) + 0.4


@pytest.mark.convert
def test_tiny_nns2_trains_and_exports_int8(tiny_faces, tmp_path, monkeypatch):
    from edge.embedder import Embedder
    from edge.image_io import load_image
    from edge.manifest import Manifest

    monkeypatch.setenv("DOORFACE_CACHE", str(tmp_path / "cache"))
    cfg = train_config.TrainConfig(width=TINY_WIDTH, batch_identities=TINY_IDENTITIES,
                                   per_identity=TINY_PER_IDENTITY, learning_rate=3e-3, warmup_epochs=0.0, epochs=1,
                                   teacher=TEACHER_KEY,
                                   augmentation=dataclasses.replace(train_config.Augmentation(), flip=0.0))
    prepared = prepare(cfg, Manifest.load(), input_shape=TINY_INPUT, faces=tiny_faces)
    assert prepared.chips.shape == (len(tiny_faces), *TINY_INPUT)
    assert np.allclose(np.linalg.norm(prepared.targets, axis=1), 1.0, atol=1e-4)

    student = nns.build(TINY_ARCH, TINY_INPUT, width=TINY_WIDTH)
    head = T.make_head(prepared.targets.shape[1])
    step = T.make_train_step(student, head, T.make_optimizer(cfg, TINY_STEPS), cfg)
    labels = np.repeat(np.arange(TINY_IDENTITIES), TINY_PER_IDENTITY).astype(np.int32)
    images = normalise(prepared.chips)
    losses = [float(step(images, prepared.targets, labels)["loss"]) for _ in range(TINY_STEPS)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-LOSS_WINDOW:]) < 0.8 * np.mean(losses[:LOSS_WINDOW]), losses

    int8, float_model = export_models(student, TINY_ARCH, TINY_INPUT, TINY_WIDTH, images)
    report = tflite_tools.inspect_model(int8)
    assert report.fully_int8, report.float_ops
    assert set(report.ops) <= tflite_tools.EDGETPU_OPS
    assert not report.dynamic_input

    out = tmp_path / "models"
    out.mkdir()
    for name, content in (("nns2_int8.tflite", int8), ("nns2_float.tflite", float_model)):
        (out / name).write_bytes(content)
    agreement = np.sum(run_tflite(int8, images) * run_tflite(float_model, images), axis=1)
    assert agreement.mean() > 0.9
    provenance = {"model": {"params": 1, "macs": 1, "flops": 2}, "source": {"teacher": TEACHER_KEY},
                  "training": {}, "calibration_faces": len(images)}
    entries = manifest_entries("nns2", int8, float_model, TINY_INPUT, provenance, agreement, "compatible")
    (out / "manifest.json").write_text(json.dumps({"models": entries}), encoding="utf-8")
    for key in ("nns2", "nns2_float"):
        embedder = Embedder(Manifest.load(out).entry(key), num_threads=1)
        face = tiny_faces[0]
        vector = embedder(load_image(face.path), face.landmarks)
        assert vector.shape == (1, nns.EMBEDDING_DIM)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)


def test_nme_by_hand():
    theirs = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float64)  # inter-ocular 40
    ours = theirs + [[4, 0], [0, 0], [0, 0], [0, 0], [0, 0]]
    assert landmark_check.nme(ours, theirs) == pytest.approx(4 / 5 / 40)
    with pytest.raises(ValueError, match="both eyes"):
        landmark_check.nme(ours, np.zeros((5, 2)))


def test_train_faces_landmarks_agree_with_our_mtcnn(tiny_faces):
    """The set's landmarks (the ``mtcnn`` package's) frame faces as our int8 MTCNN does, and a set whose landmarks
    are off by a fifth of the inter-ocular distance is caught."""
    from edge.detector import MtcnnDetector

    detector = MtcnnDetector.from_manifest()
    agreement = landmark_check.measure(tiny_faces, detector)
    assert agreement.faces == len(tiny_faces) and agreement.missed == 0
    assert agreement.agrees and agreement.median_nme < landmark_check.MAX_MEDIAN_NME, agreement

    def shifted(face):
        eyes = np.linalg.norm(face.landmarks[0] - face.landmarks[1])
        return dataclasses.replace(face, landmarks=face.landmarks + np.float32([0.2 * eyes, 0.1 * eyes]))

    off = landmark_check.measure([shifted(f) for f in tiny_faces], detector)
    assert not off.agrees and off.median_nme > 0.15, off


def test_int8_lfw_loss_over_the_limit_is_warned():
    # The LFW results of the 60-epoch nns1 exported with 2000 and with 4000 calibration faces.
    from converters.evaluate import lfw as evaluate_lfw

    manifest = Manifest.load()
    with_2000 = {"models": {"nns1": {"accuracy_mean": 0.92933}, "nns1_float": {"accuracy_mean": 0.93333}}}
    with_4000 = {"models": {"nns1": {"accuracy_mean": 0.93283}, "nns1_float": {"accuracy_mean": 0.93333}}}
    loss = evaluate_lfw.int8_loss_points(with_2000, manifest, "nns1")  # pairs nns1 with its float_reference
    assert loss == pytest.approx(0.40)
    warning = int8_loss_warning("nns1", loss)
    assert warning and "0.40 pt" in warning and "CALIBRATION_FACES" in warning
    assert int8_loss_warning("nns1", evaluate_lfw.int8_loss_points(with_4000, manifest, "nns1")) is None
    no_reference = evaluate_lfw.int8_loss_points(with_2000, manifest, "nns1_float")  # a float model has none
    assert no_reference is None and int8_loss_warning("nns1_float", no_reference) is None
