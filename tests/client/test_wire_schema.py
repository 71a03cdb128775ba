"""The wire contract (docs/wire.md, docs/wire.schema.json) against the documentation and a real daemon.

* the schema is valid JSON Schema draft 2020-12, and every JSON example in docs/wire.md
  validates against it (and decodes);
* the field tables of docs/wire.md, the schema and what a daemon sends name the same keys, so
  doc, schema and code cannot drift apart;
* every message and control reply of a real daemon run (tests/wire_daemon.py: a subprocess
  with CURVE, replaying scans the DSP must skip) validates against the schema.
"""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

jsonschema = pytest.importorskip("jsonschema", reason="the [test] extra installs jsonschema")
from jsonschema import Draft202012Validator  # noqa: E402
from referencing import Registry, Resource  # noqa: E402

from ionstream.client import wire  # noqa: E402

DOCS = Path(__file__).parents[2] / "docs"
WIRE_MD = (DOCS / "wire.md").read_text()
SCHEMA = json.loads((DOCS / "wire.schema.json").read_text())
ENVELOPE = {"schema", "source", "session", "seq", "buffers", "t_pub_ns"}
TOPICS = ("peaks", "class", "spectrum", "trace", "status")
REPLY_ONLY = {"ok", "cmd", "id"}


def validator(definition: str | None = None) -> Draft202012Validator:
    """A validator for the whole schema (the envelope) or one of its $defs."""
    registry = Registry().with_resource(SCHEMA["$id"], Resource.from_contents(SCHEMA))
    target = SCHEMA if definition is None else {"$ref": f"{SCHEMA['$id']}#/$defs/{definition}"}
    return Draft202012Validator(target, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def assert_valid(instance, definition: str | None = None) -> None:
    errors = sorted(validator(definition).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])


# ---- what docs/wire.md says --------------------------------------------------------------------
def marked_blocks(marker: str) -> dict[str, str]:
    """The fenced block after each ``<!-- marker: NAME -->`` comment, by NAME."""
    pattern = rf"<!-- {marker}: (\S+) -->\n```\w*\n(.*?)```"
    return {name: body for name, body in re.findall(pattern, WIRE_MD, re.S)}


def section(heading: str) -> str:
    start = WIRE_MD.index(heading)
    end = WIRE_MD.find("\n### ", start + len(heading))
    end2 = WIRE_MD.find("\n## ", start + len(heading))
    ends = [e for e in (end, end2) if e > 0]
    return WIRE_MD[start:min(ends) if ends else None]


def table(text: str, first_column: str) -> dict[str, str]:
    """Rows of the markdown table whose first header cell is ``first_column``: key -> `sent` cell.

    A first cell may name several keys (`a`, `b`); each gets the row's `sent` value."""
    rows: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"| {first_column} |"):
            header = [c.strip() for c in line.strip("|").split("|")]
            sent = header.index("sent") if "sent" in header else None
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in row.strip("|").split("|")]
                for key in re.findall(r"`([^`]+)`", cells[0]):
                    rows[key] = cells[sent] if sent is not None else "always"
            return rows
    raise AssertionError(f"no table starting with '| {first_column} |' in this part of docs/wire.md")


def documented_fields(topic: str) -> dict[str, str]:
    return table(section(f"### `{topic}`"), "field")


def documented_stats() -> dict[str, str]:
    return table(section("### `status`"), "stat")


def documented_event_keys() -> dict[str, str]:
    return table(section("### `trace`"), "event key")


def schema_properties(definition: str) -> tuple[set[str], set[str]]:
    """(properties, required) of a topic/def, without the envelope's keys."""
    d = SCHEMA["$defs"][definition]
    parts = d.get("allOf", [d])
    props: set[str] = set()
    required: set[str] = set()
    for part in parts:
        if "$ref" in part:
            continue
        props |= set(part.get("properties", {}))
        required |= set(part.get("required", []))
    return props - ENVELOPE, required - ENVELOPE


# ---- the schema itself and the document's examples -----------------------------------------------
def test_schema_is_valid_draft_2020_12():
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def doc_worked_example() -> list[bytes]:
    from test_wire import _doc_example  # the byte-for-byte parser of § 7's frames

    return _doc_example()


def test_worked_example_validates_and_decodes():
    frames = doc_worked_example()
    header = json.loads(frames[1])
    assert_valid(header, "peaks")
    assert_valid(header)  # the envelope alone, as a reader that does not know the topic checks it


@pytest.mark.parametrize("topic", ["class", "spectrum", "trace", "status"])
def test_header_examples_validate_and_decode(topic):
    examples = marked_blocks("header-example")
    assert set(examples) == {"class", "spectrum", "trace", "status"}, "one header example per other topic"
    header = json.loads(examples[topic])
    assert_valid(header, topic)
    # and a reader decodes it: buffer frames of the sizes its descriptors give
    frames = [topic.encode(), json.dumps(header).encode()]
    for d in header["buffers"]:
        frames.append(np.zeros(int(np.prod(d["shape"])), np.dtype(d["dtype"])).tobytes())
    decoded = wire.decode(frames)
    assert decoded.topic == topic and list(decoded.arrays) == [d["name"] for d in header["buffers"]]


def test_buffer_descriptor_example_validates():
    block = re.search(r"## 4\. Buffers.*?```json\n(.*?)```", WIRE_MD, re.S).group(1)
    assert_valid(json.loads(block), "buffer")


@pytest.mark.parametrize("name", ["help", "record", "reload-model", "shutdown", "error"])
def test_control_reply_examples_validate(name):
    examples = marked_blocks("control-example")
    reply = json.loads(examples[name])
    assert_valid(reply, "control_reply")
    assert_valid(reply, "reply_error" if name == "error" else "reply_" + name.replace("-", "_"))


def test_inline_control_exchanges_validate():
    """The `> request` / `< reply` lines of § 10: JSON requests and every reply."""
    block = section("## 10. The control socket")
    replies = [json.loads(line[2:]) for line in block.splitlines() if line.startswith("< ")]
    requests = [json.loads(line[2:]) for line in block.splitlines() if line.startswith("> {")]
    assert len(replies) >= 3 and requests
    for reply in replies:
        assert_valid(reply, "control_reply")
    for request in requests:
        assert validator("control_request").is_valid(request) == (request.get("action") != "pause")


def test_status_example_has_every_always_figure():
    stats = json.loads(marked_blocks("header-example")["status"])["stats"]
    always = {k for k, sent in documented_stats().items() if sent == "always"}
    assert always <= set(stats), f"the § 7 status example lacks {sorted(always - set(stats))}"


def test_schema_rejects_what_the_document_forbids():
    header = json.loads(doc_worked_example()[1])
    for broken in ({**header, "schema": [2, 0]}, {**header, "session": "XYZ"},
                   {**header, "buffers": header["buffers"][:2]}, {k: v for k, v in header.items() if k != "seq"},
                   {**header, "polarity": "sideways"}):
        assert not validator("peaks").is_valid(broken)
    assert validator("peaks").is_valid({**header, "schema": [1, 7], "a_new_field": {"x": 1}})  # a later minor


# ---- doc tables == schema ----------------------------------------------------------------------
@pytest.mark.parametrize("topic", TOPICS)
def test_doc_field_tables_equal_the_schema(topic):
    doc = documented_fields(topic)
    props, required = schema_properties(topic)
    assert set(doc) == props, f"{topic}: doc only {sorted(set(doc) - props)}, schema only {sorted(props - set(doc))}"
    assert {k for k, sent in doc.items() if sent == "always"} == required


def test_doc_stats_table_equals_the_schema():
    doc = documented_stats()
    stats = SCHEMA["$defs"]["stats"]
    assert set(doc) == set(stats["properties"]), (sorted(set(doc) - set(stats["properties"])),
                                                  sorted(set(stats["properties"]) - set(doc)))
    assert {k for k, sent in doc.items() if sent == "always"} == set(stats["required"])


def test_doc_event_table_equals_the_schema():
    assert set(documented_event_keys()) == set(SCHEMA["$defs"]["event"]["properties"])


def test_curve_config_snippet_names_real_keys():
    from ionstream.config import PublishConfig

    snippet = tomllib.loads(re.search(r"<!-- curve-config -->\n```toml\n(.*?)```", WIRE_MD, re.S).group(1))
    keys = set(snippet["publish"])
    assert {"curve_server_secret", "curve_clients_dir"} <= keys
    assert keys <= set(PublishConfig.__dataclass_fields__)
    # the directory the snippet names is the one the § 11 commands fill
    assert snippet["publish"]["curve_clients_dir"] in section("## 11. Security: CURVE").split("```")[1]


# ---- a real daemon -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    from wire_daemon import run_daemon

    run = run_daemon(tmp_path_factory.mktemp("wire-contract"))
    assert run.exit_code == 0, run.stderr[-4000:]
    return run


def test_every_message_validates(daemon):
    counts = {t: 0 for t in TOPICS}
    for topic, header, frames in daemon.messages:
        assert_valid(header, topic)
        wire.decode(frames)
        counts[topic] += 1
    assert all(counts.values()), counts


def test_every_control_reply_validates(daemon):
    assert set(daemon.replies) == {"status", "help", "record start", "record stop", "reload-model", "refused",
                                   "shutdown"}
    for name, reply in daemon.replies.items():
        assert_valid(reply, "control_reply")
        assert reply["ok"] == (name != "refused"), reply
    assert daemon.replies["status"]["id"] == 1  # echoed


@pytest.mark.parametrize("topic", ["peaks", "class", "spectrum", "trace"])
def test_documented_fields_are_the_fields_sent(daemon, topic):
    doc = documented_fields(topic)
    headers = daemon.headers(topic)
    sent = set().union(*(set(h) for h in headers)) - ENVELOPE
    assert sent == set(doc), f"{topic}: sent, not documented {sorted(sent - set(doc))}; " \
                             f"documented, not sent {sorted(set(doc) - sent)}"
    always = {k for k, when in doc.items() if when == "always"}
    for h in headers:
        assert always <= set(h), f"{topic} message without {sorted(always - set(h))}"


def test_documented_event_keys_are_the_keys_sent(daemon):
    events = [e for h in daemon.headers("trace") for e in h["events"]]
    kinds = {e["kind"] for e in events}
    assert kinds >= {"start", "apex"}, f"the run produced only {kinds} events"
    for e in events:
        assert set(e) == set(documented_event_keys())


def test_documented_stats_are_the_stats_sent(daemon):
    doc = documented_stats()
    topic_stats = [h["stats"] for h in daemon.headers("status")]
    sent = set().union(*(set(s) for s in topic_stats))
    assert sent == set(doc), f"sent, not documented {sorted(sent - set(doc))}; " \
                             f"documented, not sent {sorted(set(doc) - sent)}"
    always = {k for k, when in doc.items() if when == "always"}
    for s in topic_stats:
        assert always <= set(s), f"status without {sorted(always - set(s))}"


def test_status_topic_and_control_reply_are_one_document(daemon):
    reply = daemon.replies["status"]
    stats = daemon.headers("status")[-1]["stats"]
    assert set(reply) - REPLY_ONLY == set(stats)


def test_scans_the_dsp_cannot_analyse_are_published_empty_not_errors(daemon):
    """0-, 1-, 2-sample scans and non-increasing m/z axes are valid device frames: each gets an
    empty peaks message, TIC 0, no class message, and none counts as a dsp_error."""
    capture = daemon.capture
    peaks = {h["scan"]: h for h in daemon.first_pass("peaks")}
    classes = {h["scan"] for h in daemon.first_pass("class")}
    traces = {h["scan"]: h for h in daemon.first_pass("trace")}
    assert set(peaks) == set(range(capture.scans))
    for scan in capture.skipped_scans:
        assert peaks[scan]["buffers"][0]["shape"] == [0] and peaks[scan]["tic"] == 0
        assert scan not in classes
        assert traces[scan]["names"][0] == "tic"
    assert capture.explicit_ok_scan in classes and peaks[capture.explicit_ok_scan]["buffers"][0]["shape"][0] >= 1
    assert classes == set(range(capture.scans)) - capture.skipped_scans
    last = daemon.headers("status")[-1]["stats"]
    assert last["dsp_errors"] == 0
    assert last["dsp_skipped"] == len(capture.skipped_scans)
