"""The README and docs/: every figure comes from a result file a script of the repo wrote, the generated blocks
are up to date, the README stays a few screens long, and every relative link leads somewhere."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from bench import update_readme

README_MAX_LINES = 250
PAGES = ("install", "usage", "configuration", "home-assistant", "household", "troubleshooting", "performance",
         "models", "development", "research")


def _convert_extra_available() -> bool:
    try:
        update_readme.nns_targets(update_readme.README)
    except ImportError:
        return False
    return True


def test_generated_blocks_match_their_sources():
    skip = frozenset() if _convert_extra_available() else update_readme.NEEDS_CONVERT_EXTRA
    stale = update_readme.stale_docs(skip=skip)
    assert not stale, f"stale generated blocks in {[str(p) for p in stale]}: run python -m bench.update_readme"


def test_blocks_that_read_the_nns_modules_match_their_sources():
    if not _convert_extra_available():
        pytest.skip("the nns_targets block needs the convert extra (pip install '.[convert]')")
    assert not update_readme.stale_docs()


def test_check_mode_exits_0_when_up_to_date():
    if not _convert_extra_available():
        pytest.skip("needs the convert extra: --check renders the nns_targets block too")
    result = subprocess.run([sys.executable, "-m", "bench.update_readme", "--check"], capture_output=True, text=True,
                            cwd=update_readme.ROOT, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_stale_block_is_seen_and_rewritten():
    text = "intro\n<!-- generated:config -->\nan old table\n<!-- /generated:config -->\nend\n"
    rendered = update_readme.render(text, update_readme.DOCS_DIR / "configuration.md")
    assert rendered != text and "an old table" not in rendered and "`detector.num_threads`" in rendered
    assert rendered.startswith("intro\n") and rendered.endswith("<!-- /generated:config -->\nend\n")
    assert update_readme.render(rendered, update_readme.DOCS_DIR / "configuration.md") == rendered


def test_every_block_has_a_source():
    for doc in update_readme.doc_files():
        for match in update_readme.PATTERN.finditer(doc.read_text(encoding="utf-8")):
            try:
                update_readme.source_of(match.group("name"))
            except KeyError:
                pytest.fail(f"{doc.name}: generated block {match.group('name')!r} has no source")


def test_the_docs_pages_exist_and_the_readme_links_each():
    readme = update_readme.README.read_text(encoding="utf-8")
    for page in PAGES:
        assert (update_readme.DOCS_DIR / f"{page}.md").is_file(), page
        assert f"(docs/{page}.md)" in readme, f"README.md does not link docs/{page}.md"


def test_readme_is_at_most_250_lines():
    lines = update_readme.README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move depth to docs/"


def test_relative_links_point_to_existing_files_and_headings():
    assert update_readme.broken_links() == []


def test_the_link_check_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md#a-code-heading) [file](missing.md) [anchor](other.md#nope) [self](#top)\n"
                   "[url](https://example.com/x.md) `[code](missing2.md)`\n\n```\n[block](missing3.md)\n```\n",
                   encoding="utf-8")
    problems = update_readme.broken_links([doc])
    assert len(problems) == 3, problems
    assert any("missing.md (no such file)" in p for p in problems)
    assert any("other.md#nope" in p for p in problems) and any("#top" in p for p in problems)


def test_readme_keeps_the_test_command_that_ci_runs():
    ci = (update_readme.ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    marker = next(i for i, line in enumerate(ci) if "README's test command" in line)
    command = next(line.strip() for line in ci[marker + 1:] if line.strip() and not line.startswith("#"))
    readme = update_readme.README.read_text(encoding="utf-8")
    section = readme.split("\n## Test\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks and command in blocks[0].splitlines(), f"README's Test section must show {command!r}"


def test_the_home_assistant_example_uses_the_published_entities_and_topics():
    from edge.discovery import slugify

    page = (update_readme.DOCS_DIR / "home-assistant.md").read_text(encoding="utf-8")
    block = page.split("<!-- generated:ha_automation -->", 1)[1].split("<!-- /generated:ha_automation -->")[0]
    automations = yaml.safe_load(block.split("```yaml\n", 1)[1].split("```", 1)[0])
    published = {entity_id for _, _, entity_id in update_readme._entities(update_readme._example_configs())}
    used = {t["entity_id"] for a in automations for t in a["triggers"] if "entity_id" in t}
    assert used and used <= published, used - published
    topics = {t["topic"] for a in automations for t in a["triggers"] if t.get("trigger") == "mqtt"}
    assert topics == {f"doorface/{update_readme.EXAMPLE_CAMERA}/recognized"}
    assert f"binary_sensor.doorface_{update_readme.EXAMPLE_CAMERA}_{slugify(update_readme.EXAMPLE_PERSON)}" in used
