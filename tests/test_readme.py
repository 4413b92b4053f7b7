"""Every figure in the README comes from a result file that a script of the repo wrote."""

from __future__ import annotations

import subprocess
import sys

from bench import update_readme


def test_readme_generated_blocks_match_the_result_files():
    result = subprocess.run([sys.executable, "-m", "bench.update_readme", "--check"], capture_output=True, text=True,
                            cwd=update_readme.ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_block_has_a_source():
    text = update_readme.README.read_text(encoding="utf-8")
    names = set(update_readme.PATTERN.findall(text))
    assert names, "the README has no generated blocks"
    known = set(update_readme.BLOCKS) | set(update_readme.GENERATORS)
    assert {n[1] for n in names} <= known
