"""docs/protocol.md cannot drift from the codec: its examples are the generator's output, byte for byte.

Rule: the page's example blocks are whatever ``docs/gen_protocol_examples.py`` prints
(made with ``shardq.protocol.frames.encode``). When one of these tests fails, change the
generator or the codec on purpose, then run ``python docs/gen_protocol_examples.py --write``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from shardq.errors import WIRE_ERRORS
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD, REQUEST_TYPES, FrameDecoder, Message, MsgType
from shardq.task import Task

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
GENERATOR = ROOT / "docs" / "gen_protocol_examples.py"
OPEN = re.compile(r"<!-- example:(\S+) -->")
CLOSE = "<!-- /example -->"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protocol_examples", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def doc_blocks(text: str) -> list[tuple[str, str]]:
    """(name, text between the markers) in page order; a marker left open or nested fails."""
    out = []
    pos = 0
    while (m := OPEN.search(text, pos)) is not None:
        end = text.find(CLOSE, m.end())
        assert end >= 0, f"example {m[1]} is never closed"
        inner = text[m.end():end]
        assert OPEN.search(inner) is None, f"example {m[1]} is not closed before the next one"
        assert inner.startswith("\n"), f"example {m[1]}: its marker must end its line"
        out.append((m[1], inner[1:]))
        pos = end + len(CLOSE)
    assert text.count(CLOSE) == len(out), "a stray <!-- /example --> marker"
    return out


def test_every_block_in_the_page_is_the_generators_output(gen, doc) -> None:
    generated = gen.blocks()
    found = doc_blocks(doc)
    names = [name for name, _ in found]
    assert len(names) == len(set(names)), f"examples shown twice: {sorted(n for n in names if names.count(n) > 1)}"
    assert set(names) - set(generated) == set(), "examples in the page that are no longer generated"
    assert set(generated) - set(names) == set(), "generated examples missing from the page"
    for name, text in found:
        assert text == generated[name], (
            f"docs/protocol.md example {name} differs from the codec; "
            "run: python docs/gen_protocol_examples.py --write")


def test_the_generator_script_prints_the_pages_blocks(gen, doc) -> None:
    run = subprocess.run([sys.executable, str(GENERATOR)], capture_output=True, text=True,
                         check=True, cwd="/", timeout=60)
    in_page = dict(doc_blocks(doc))
    expected = "".join(gen.marked(name, in_page[name]) + "\n" for name in gen.blocks())
    assert run.stdout == expected


HEX_LINE = re.compile(r"^[0-9a-f]{2}( [0-9a-f]{2})*$")


def frame_bytes(block: str) -> bytes:
    """Read the ```hex section of a block back into bytes, ignoring the layout."""
    section = block.split("```hex\n", 1)[1].split("```", 1)[0]
    out = bytearray()
    for line in section.splitlines():
        for group in line.split("|"):
            group = group.strip()
            if group:
                assert HEX_LINE.match(group), f"not hex bytes: {group!r}"
                out += bytes.fromhex(group)
    return bytes(out)


def test_every_example_frame_decodes_to_what_its_text_says(doc) -> None:
    """Independent of the generator: the hex on the page decodes to the header and blob shown."""
    count = 0
    for name, block in doc_blocks(doc):
        if "```hex" not in block:
            continue
        frame = frame_bytes(block)
        dec = FrameDecoder(accept=frozenset(MsgType))
        dec.feed(frame)
        msg = dec.next()
        assert type(msg) is Message and dec.buffered == 0, name
        head = re.match(r"(\w+) header: `(.*)`\n", block)
        assert head is not None, name
        assert head[1] == msg.type.name, name
        assert json.loads(head[2]) == msg.header, name
        blob = re.search(r"^blob: `(b'.*')`$", block, re.M)
        assert msg.blob == (ast.literal_eval(blob[1]) if blob else b""), name
        kind = name.split(":")[0]
        if kind in MsgType.__members__ and name.split(":")[1].startswith("request"):
            assert msg.type is MsgType[kind] and msg.rid is not None, name
        if name.split(":")[1].startswith("ack"):
            assert msg.type is MsgType.ACK, name
        if kind == "NACK":
            assert msg.type is MsgType.NACK and msg.header["error"]["code"] == name.split(":")[1], name
        count += 1
    assert count >= 2 * len(REQUEST_TYPES) + len(WIRE_ERRORS)


def test_every_request_type_is_documented_with_a_request_and_its_ack(gen, doc) -> None:
    names = set(gen.blocks())
    for t in sorted(REQUEST_TYPES):
        assert f"### {t.name} (0x{t.value:02X})" in doc, f"no section for {t.name}"
        assert f"| 0x{t.value:02X} | [{t.name}]" in doc, f"{t.name} missing from the type table"
        assert f"{t.name}:request" in names and f"{t.name}:ack" in names, t.name
    for t in (MsgType.ACK, MsgType.NACK):
        assert f"| 0x{t.value:02X} | {t.name} |" in doc


def test_every_error_code_is_in_the_table_once_and_has_an_example(gen, doc) -> None:
    section = doc.split("\n## Errors\n", 1)[1]
    table = section[section.index("| code | when |"):].split("\n\n", 1)[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == "code"
    assert sorted(rows[1:]) == sorted(WIRE_ERRORS), "the errors table must list every code once"
    names = set(gen.blocks())
    for code in WIRE_ERRORS:
        assert f"NACK:{code}" in names, f"no example NACK for {code}"


def test_the_task_object_in_the_examples_has_the_servers_keys(gen) -> None:
    wire = Task(bytes(16), "t", 100, 0, 0, 0, 0, 3, 300, 0).to_wire(0)
    for task in (gen.TASK_A_CLAIMED, gen.TASK_A_DONE, gen.TASK_C_DEAD):
        assert list(task) == list(wire)
        assert task["shard"] == int(task["id"][0:8], 16) % gen.SHARDS


def test_the_page_states_the_limits_and_the_routing_section(doc) -> None:
    assert MAX_FRAME == 16_777_216 and MAX_PAYLOAD == 10_485_760
    for text in ("16,777,216", "10,485,760", "## Multi-shard routing", "## The task lifecycle"):
        assert text in doc
    diagram = doc.split("## The task lifecycle", 1)[1].split("```", 2)[1]
    for status in ("pending", "in_progress", "failed", "completed", "dead_letter", "cancelled"):
        assert f" {status} " in diagram, f"{status} is not drawn in the lifecycle diagram"
