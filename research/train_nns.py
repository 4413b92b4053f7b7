"""``python -m research train-nns``: train an NNS1/NNS2 embedder (:mod:`research.nns`) and ship it in int8.

A run reads ``train-faces`` (LFW-disjoint CelebA crops) split by identity into training and held-out validation
faces, aligned once and cached (:mod:`research.data`), with its teacher's embeddings as distillation targets
(:mod:`research.teacher`), all assembled once by :mod:`research.prepare`. It trains the student on augmented
(:mod:`research.augment`) batches of P identities × K faces (:mod:`research.batches`) against the distillation and
triplet losses (:mod:`research.losses`), measures it on the held-out identities after every epoch
(:mod:`research.verification`), and at the end exports it in int8 and float into the models folder and evaluates
it on LFW (:mod:`research.export`).

This module holds the training itself: the training step, the epoch loop, the checkpoint written after every epoch
(``--resume`` continues a run from it, ``--init-from`` starts a new run from another run's weights), the run's
history and loss plot, and :func:`run`, which does all of the above in a run folder (:mod:`research.run_folder`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from converters.fetch import sources
from edge.manifest import Manifest, default_models_dir
from research import nns
from research.batches import identity_table, make_dataset
from research.data import normalise
from research.export import evaluate_lfw, export_student, seed_models_folder
from research.losses import distillation_losses, l2_normalise, semi_hard_triplet_loss
from research.prepare import Prepared, prepare
from research.run_folder import new_run_dir, write_json
from research.train_config import TrainConfig, add_arguments, config_from_args, resume_conflicts
from research.verification import embed, verification_metrics, verification_pairs

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.npz"


# ------------------------------------------------------------------------------------------------- training step


LOSS_NAMES = ("loss", "distill", "relation", "triplet", "active_triplets")


def make_head(teacher_dim: int, embedding_dim: int = nns.EMBEDDING_DIM):
    """The training-only linear projection from the student's embedding to the teacher's space."""
    import keras

    head = keras.layers.Dense(teacher_dim, use_bias=False, name="distill_head")
    head.build((None, embedding_dim))
    return head


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int):
    import keras

    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, total - warmup),
                                                      warmup_target=cfg.learning_rate, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def make_train_step(student, head, optimizer, cfg: TrainConfig) -> Callable:
    """A compiled step: (images, teacher targets, labels) → dict of the loss terms (see LOSS_NAMES)."""
    import tensorflow as tf

    variables = student.trainable_variables + head.trainable_variables
    optimizer.build(variables)

    @tf.function(reduce_retracing=True)
    def step(images, targets, labels):
        with tf.GradientTape() as tape:
            raw = student(images, training=True)
            unit = l2_normalise(raw)
            distill, relation = distillation_losses(unit, l2_normalise(head(unit)), l2_normalise(targets))
            triplet, active = semi_hard_triplet_loss(unit, labels, cfg.triplet_margin)
            loss = cfg.distill_weight * distill + cfg.relation_weight * relation + cfg.triplet_weight * triplet
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return {"loss": loss, "distill": distill, "relation": relation, "triplet": triplet,
                "active_triplets": active}

    return step


# ------------------------------------------------------------------------------------------- checkpoint, history


def save_checkpoint(path: Path, student, head, optimizer, epoch: int) -> None:
    """Weights, batch-norm statistics, head and optimizer state in one .npz, replaced atomically."""
    arrays = {f"student_{i}": w for i, w in enumerate(student.get_weights())}
    arrays.update({f"head_{i}": w for i, w in enumerate(head.get_weights())})
    arrays.update({f"optimizer_{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    arrays["epoch"] = np.asarray(epoch)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _restore(data, path: Path, prefix: str, expected: Sequence[tuple]) -> list:
    """The ``prefix`` arrays of a checkpoint, checked against the model's shapes."""
    arrays = [data[f"{prefix}_{i}"] for i in range(len(expected)) if f"{prefix}_{i}" in data.files]
    if len(arrays) != len(expected) or any(a.shape != tuple(s) for a, s in zip(arrays, expected)):
        raise ValueError(f"{path}: its {prefix} arrays do not fit this model (another architecture, width or "
                         "teacher?); start a new run, or point at a checkpoint of the same model")
    return arrays


def load_weights(path: Path, student, head) -> int:
    """Student and head weights (batch-norm statistics included) of a :func:`save_checkpoint` file; returns the
    epoch it was written after."""
    data = np.load(path)
    student.set_weights(_restore(data, path, "student", [w.shape for w in student.get_weights()]))
    head.set_weights(_restore(data, path, "head", [w.shape for w in head.get_weights()]))
    return int(data["epoch"])


def load_checkpoint(path: Path, student, head, optimizer) -> int:
    """Restore what :func:`save_checkpoint` wrote (the optimizer must be built); returns the finished epoch."""
    epoch = load_weights(path, student, head)
    values = _restore(np.load(path), path, "optimizer", [tuple(v.shape) for v in optimizer.variables])
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)
    return epoch


def plot_history(history: list[dict], path: Path, teacher_val: Optional[float] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (losses, val) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("loss", "distill", "relation", "triplet"):
        losses.plot(epochs, [h[name] for h in history], marker="o", label=name)
    losses.set_xlabel("epoch")
    losses.set_ylabel("training loss (epoch mean)")
    losses.set_yscale("log")
    losses.grid(True, alpha=0.3)
    losses.legend()
    val.plot(epochs, [100 * h["val_accuracy"] for h in history], marker="o", label="student (float)")
    if teacher_val is not None:
        val.axhline(100 * teacher_val, color="grey", linestyle="--", label="teacher")
    val.set_xlabel("epoch")
    val.set_ylabel("held-out identities: verification accuracy (%)")
    val.grid(True, alpha=0.3)
    val.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ training


def configure_threads(threads: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started (a test, or a second run in one process)
        log.debug("TensorFlow threads already configured")


def _epoch_means(rows: list[dict]) -> dict:
    return {name: float(np.mean([float(r[name]) for r in rows])) for name in LOSS_NAMES}


def train(cfg: TrainConfig, prepared: Prepared, run_dir: Path, resume: bool = False):
    """Train (or continue) the student; checkpoint, history and loss.png are written after every epoch.

    Returns the Keras student and the history (one dict per epoch).
    """
    configure_threads(cfg.threads)
    arch = nns.ARCHITECTURES[cfg.arch]
    student = nns.build(arch, prepared.input_shape, width=cfg.width, dropout=cfg.dropout)
    head = make_head(prepared.targets.shape[1])
    labels = np.asarray([f.identity for f in prepared.faces])
    members, weights = identity_table(labels, prepared.split.train)
    steps = cfg.steps_per_epoch or max(1, int(np.ceil(len(prepared.split.train) / cfg.batch_size)))
    optimizer = make_optimizer(cfg, steps)
    step = make_train_step(student, head, optimizer, cfg)

    history_path, checkpoint = run_dir / "history.json", run_dir / CHECKPOINT_NAME
    history: list[dict] = []
    start = 0
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint} not found: nothing to resume in {run_dir}")
        start = load_checkpoint(checkpoint, student, head, optimizer)
        history = json.loads(history_path.read_text(encoding="utf-8"))[:start] if history_path.is_file() else []
        tqdm.write(f"resumed {run_dir} after epoch {start}")
    elif cfg.init_from:
        init = Path(cfg.init_from) / CHECKPOINT_NAME
        tqdm.write(f"initialised from {init} (written after its epoch {load_weights(init, student, head)})")

    val_inputs = normalise(prepared.chips[prepared.split.val])
    pairs = verification_pairs(labels[prepared.split.val], cfg.seed)
    teacher_val = verification_metrics(prepared.targets[prepared.split.val], pairs)["accuracy"]
    for epoch in range(start + 1, cfg.epochs + 1):
        started = time.perf_counter()
        dataset = make_dataset(prepared.chips, prepared.targets, members, weights, cfg, steps,
                               seed=cfg.seed * 100_003 + epoch,  # per-epoch seed: a resumed run sees the same data
                               view_targets=prepared.view_targets)
        rows = []
        bar = tqdm(dataset, total=steps, desc=f"{cfg.arch} epoch {epoch}/{cfg.epochs}", unit="batch", leave=False)
        for images, targets, batch_labels in bar:
            rows.append({k: float(v) for k, v in step(images, targets, batch_labels).items()})
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", trip=f"{rows[-1]['triplet']:.3f}")
        bar.close()
        train_seconds = time.perf_counter() - started
        val = verification_metrics(embed(student, val_inputs), pairs)
        record = {"epoch": epoch, **_epoch_means(rows), "first_batch_loss": rows[0]["loss"],
                  "lr": float(optimizer.learning_rate), "steps": steps, "train_seconds": round(train_seconds, 1),
                  "val_accuracy": val["accuracy"], "val_auc": val["auc"], "val_pairs": val["pairs"],
                  "teacher_val_accuracy": teacher_val}
        history.append(record)
        save_checkpoint(checkpoint, student, head, optimizer, epoch)
        write_json(history_path, history)
        plot_history(history, run_dir / "loss.png", teacher_val)
        tqdm.write(f"{cfg.arch} epoch {epoch}: loss {record['loss']:.4f} (distill {record['distill']:.4f}, "
                   f"relation {record['relation']:.4f}, triplet {record['triplet']:.4f}), "
                   f"val acc {100 * val['accuracy']:.2f}% AUC {val['auc']:.4f} "
                   f"(teacher {100 * teacher_val:.2f}%), {train_seconds:.0f} s")
    return student, history


# ------------------------------------------------------------------------------------------------ orchestration


def init_source(cfg: TrainConfig) -> dict:
    """The run ``cfg.init_from`` names, checked before anything is written: its checkpoint must exist and it must
    share this run's architecture, width and identity split, or the held-out validation identities would be
    ones the initial weights were trained on."""
    folder = Path(cfg.init_from)
    checkpoint = folder / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--init-from {folder}: {checkpoint} not found; name a train-nns run folder")
    source = TrainConfig.from_json(json.loads((folder / "config.json").read_text(encoding="utf-8"))["config"])
    for name in ("arch", "width", "seed", "val_fraction"):
        if getattr(source, name) != getattr(cfg, name):
            raise ValueError(f"--init-from {folder} trained with {name} {getattr(source, name)!r}, this run has "
                             f"{getattr(cfg, name)!r}: the weights (or the held-out split) would not carry over")
    return {"run": folder.name, "epoch": int(np.load(checkpoint)["epoch"]),
            "checkpoint_sha256": sources.sha256_file(checkpoint)}


def run(cfg: TrainConfig, *, resume: Optional[Path] = None, out: Optional[Path] = None, lfw: bool = True,
        models: Optional[Path] = None,
        resume_epochs: Optional[int] = None, resume_threads: Optional[int] = None) -> Path:
    """Prepare, train (or resume), export into ``out`` and evaluate on LFW; returns the run folder.

    ``out`` defaults to the shipped models folder for a full-data run, and to ``<run>/models`` (seeded with the
    detector) for a ``fraction`` < 1 learning-curve run, which must not replace the shipped model.
    """
    cfg.validate()
    models = Path(models) if models else default_models_dir()
    if resume is not None:
        run_dir = Path(resume)
        stored = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        stored_cfg = TrainConfig.from_json(stored["config"])
        conflicts = resume_conflicts(stored_cfg, cfg)
        if conflicts:
            raise ValueError(f"--resume {run_dir} keeps the run's own recipe, so {'; '.join(conflicts)} would be "
                             "ignored: drop them, or start a new run (without --resume) to train with them")
        cfg = stored_cfg
        if resume_epochs:
            cfg = dataclasses.replace(cfg, epochs=resume_epochs)
        if resume_threads:
            cfg = dataclasses.replace(cfg, threads=resume_threads)
        init = stored.get("init")  # as checked when the run started; its source may have trained on since
    else:
        init = init_source(cfg) if cfg.init_from else None
        run_dir = new_run_dir(cfg.arch)
    manifest = Manifest.load(models)
    prepared = prepare(cfg, manifest)
    arch = nns.ARCHITECTURES[cfg.arch]
    model = nns.build(arch, prepared.input_shape, width=cfg.width)
    write_json(run_dir / "config.json", {
        "config": cfg.to_json(),
        "data": {"train_identities": prepared.split.train_identities, "train_faces": int(len(prepared.split.train)),
                 "val_identities": prepared.split.val_identities, "val_faces": int(len(prepared.split.val)),
                 "data_manifest_sha256": prepared.data_sha256},
        "landmarks": prepared.landmarks.to_json(),
        "teacher": {"key": prepared.teacher_key, "sha256": prepared.teacher_sha256},
        "init": init,
        "model": {"key": arch.key, "params": nns.count_params(model), "macs": nns.count_macs(model),
                  "flops": nns.count_flops(model), "input_shape": list(prepared.input_shape)},
    })
    student, history = train(cfg, prepared, run_dir, resume=resume is not None)
    if out is None:
        out = models if cfg.fraction >= 1.0 else run_dir / "models"
    seed_models_folder(Path(out), models)
    export_student(cfg, prepared, student, history, run_dir, Path(out))
    if lfw:
        evaluate_lfw([arch.key, f"{arch.key}_float"], Path(out), run_dir)
    return run_dir


def main(args) -> int:
    run_dir = run(config_from_args(args), resume=args.resume, out=args.out, lfw=args.lfw, models=args.models,
                  resume_epochs=args.epochs, resume_threads=args.threads)
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python -m research.train_nns", description=__doc__.split("\n")[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(parser.parse_args()))
