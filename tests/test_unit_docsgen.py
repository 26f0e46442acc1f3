"""`devenv docs generate`'s pure parts: Markdown escaping, the Mermaid ids and labels, and the
configuration reference, which must hold every key the model declares."""

from __future__ import annotations

import dataclasses

from devenv.config.model import Project, Service
from devenv.config.schema import variants_of
from devenv.data import kind_names, settings_class
from devenv.docsgen import markdown, mermaid, reference


def test_code_spans_survive_backticks_and_cells_survive_pipes() -> None:
    assert markdown.code("up") == "`up`"
    assert markdown.code("a `b` c") == "``a `b` c``"
    assert markdown.code("`x`") == "`` `x` ``"
    assert markdown.cell("a | b\nc") == "a \\| b c"
    assert markdown.prose("<SERVICE>_URL & co") == "&lt;SERVICE&gt;_URL &amp; co"


def test_mermaid_ids_are_distinct_and_labels_quoted() -> None:
    names = ["end", "o--x", "o-x", "graph", "x-ray", "1st"]
    ids = [mermaid.node_id(n) for n in names]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("svc_") and i.replace("_", "").isalnum() for i in ids)
    assert mermaid.label('say "hi" #1') == '"say #quot;hi#quot; #35;1"'


def test_the_reference_holds_every_declared_key() -> None:
    keys = {row[0] for row in reference.rows()}
    variant = variants_of(Service)
    assert variant is not None
    for f in dataclasses.fields(Service):
        if f.name != variant.field:
            assert f"services.<name>.{f.name}" in keys
        for alias in f.metadata.get("aliases", ()):
            assert f"services.<name>.{alias}" in keys
    for kind in kind_names():  # a data kind's keys, written flat on the service
        for f in dataclasses.fields(settings_class(kind)):
            assert f"services.<name>.{f.name}" in keys, (kind, f.name)
    for f in dataclasses.fields(Project):
        assert f.name in keys
    assert "services.<name>.depends_on.<name>.condition" in keys
    assert "services.<name>.health.start_period" in keys


def test_types_and_defaults_in_words() -> None:
    rows = {row[0]: row for row in reference.rows()}
    assert rows["services.<name>.stop_timeout"][1:3] == ("duration (`5s`, `500ms`)", "`10s`")
    assert rows["services.<name>.replicas"][1:3] == ("integer (0 to 100)", "`1`")
    assert rows["services.<name>.env_file"][1] == "list of string"
    assert rows["services.<name>.restart"][1] == '`"always"` | `"on-failure"` | `"no"`'
    assert rows["version"][2] == "required"
    assert rows["monitoring.trace_max_age"][1] == "duration (`5s`, `500ms`) (at least 60s)"
