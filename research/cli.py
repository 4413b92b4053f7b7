"""``python -m research``: train the NNS1/NNS2 student embedders and study them (learning curves, run reports,
fit gaps). Offline, with the converters' extra (TensorFlow); see docs/research.md."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _cmd_train_nns(args) -> int:
    from research import train_nns

    return train_nns.main(args)


def _cmd_learning_curve(args) -> int:
    from research import learning_curve

    return learning_curve.main(args)


def _cmd_compare_runs(args) -> int:
    from research import run_report

    return run_report.main(args)


def _cmd_fit_gap(args) -> int:
    from research import fit_gap

    return fit_gap.main(args)


def build_parser() -> argparse.ArgumentParser:
    from research.fit_gap import add_arguments as fit_gap_arguments
    from research.learning_curve import add_arguments as learning_curve_arguments
    from research.run_report import add_arguments as compare_runs_arguments
    from research.train_config import add_arguments as train_nns_arguments

    parser = argparse.ArgumentParser(prog="python -m research", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    train_nns = sub.add_parser("train-nns", help="train a FaceNet NNS1/NNS2 embedder on train-faces (distillation + "
                                                 "triplet), export int8 + float, evaluate on LFW")
    train_nns_arguments(train_nns)
    train_nns.set_defaults(func=_cmd_train_nns)

    curve = sub.add_parser("learning-curve", help="LFW accuracy against training-set size, from finished "
                                                  "train-nns runs (--fraction 0.25, 0.5, 1)")
    learning_curve_arguments(curve)
    curve.set_defaults(func=_cmd_learning_curve)

    compare = sub.add_parser("compare-runs", help="finished train-nns runs side by side: what their recipes differ "
                                                  "in, their length and LFW result")
    compare_runs_arguments(compare)
    compare.set_defaults(func=_cmd_compare_runs)

    gap = sub.add_parser("fit-gap", help="shipped students on the identities they trained on against held-out "
                                         "ones: memorising (data-limited) or under-fitting?")
    fit_gap_arguments(gap)
    gap.set_defaults(func=_cmd_fit_gap)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"python -m research: error: {exc}", file=sys.stderr)
        return 1
