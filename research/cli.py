"""``python -m research``: train the NNS1/NNS2 student embedders and study them (learning curves, run reports,
fit gaps). Offline, with the converters' extra (TensorFlow); see docs/research.md."""

from __future__ import annotations

import argparse
import importlib

from converters.cli import run_command

# command → (the module that declares its options, the module whose main(args) runs it, help)
COMMANDS = (
    ("train-nns", "research.train_config", "research.train_nns",
     "train a FaceNet NNS1/NNS2 embedder on train-faces (distillation + triplet), export int8 + float, evaluate on "
     "LFW"),
    ("learning-curve", "research.learning_curve", "research.learning_curve",
     "LFW accuracy against training-set size, from finished train-nns runs (--fraction 0.25, 0.5, 1)"),
    ("compare-runs", "research.run_report", "research.run_report",
     "finished train-nns runs side by side: what their recipes differ in, their length and LFW result"),
    ("fit-gap", "research.fit_gap", "research.fit_gap",
     "shipped students on the identities they trained on against held-out ones: memorising (data-limited) or "
     "under-fitting?"),
)


def _runner(module: str):
    # The work modules import TensorFlow: only the command that runs loads its module.
    return lambda args: importlib.import_module(module).main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m research", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, options, runs, text in COMMANDS:
        command = sub.add_parser(name, help=text)
        importlib.import_module(options).add_arguments(command)
        command.set_defaults(func=_runner(runs))
    return parser


def main(argv=None) -> int:
    return run_command(build_parser(), argv)
