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
    assert "pip install -e '.[dev]'" in first_block and "python -m pytest" in first_block
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-e '.[dev]'" in ci and "-m pytest" in ci
