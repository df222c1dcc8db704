"""Docs that are drawn from code must not drift from it."""

from pathlib import Path

from shardq.engine import states

ROOT = Path(__file__).resolve().parents[2]


def test_architecture_transition_table_is_generated_from_states() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- transitions -->\n", 1)[1].split("\n<!-- /transitions -->", 1)[0]
    assert block == states.diagram()


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "shardq serve --shards auto" in first_block
    assert "\nscripts/test\n" in first_block, "command 2 is scripts/test"
    script = (ROOT / "scripts" / "test").read_text()
    assert "-e '.[dev]'" in script and "-m pytest" in script
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in ci and "loadtests/ci_locust.py" in ci
