"""The table renderer: piped output is never cut; at a terminal's width, free-text columns
wrap (or go under their row) while headers and the other cells stay whole."""

from __future__ import annotations

import io

from rich.console import Console

from devenv.cli.output import Column, print_table

COLUMNS = [Column(n) for n in ("SERVICE", "STATE", "READY", "RESTARTS", "URL")] + [
    Column("", wrap=True)]
FAILED = ("[red]last reload failed[/]: api/app.py line 3: SyntaxError: invalid syntax; "
          "the previous instance keeps serving")
ROWS = [["notification-dispatcher", "[green]healthy[/]", "2/2", "0",
         "http://127.0.0.1:20001", FAILED],
        ["db", "completed", "0/1", "0", "-", ""]]
WORDS = ["notification-dispatcher", "healthy", "RESTARTS", "completed",
         "http://127.0.0.1:20001", "last reload failed", "keeps serving"]


def render(columns: list[Column], rows: list[list[str]], width: int | None) -> str:
    """What the table prints on a terminal `width` columns wide, or piped (None)."""
    console = Console(file=io.StringIO(), width=width or 80, force_terminal=width is not None,
                      color_system=None)
    print_table(columns, rows, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text


def test_piped_output_is_never_cut_or_wrapped() -> None:
    text = render(COLUMNS, ROWS, None)  # a pipe, though the console thinks it is 80 wide
    lines = text.splitlines()
    assert len(lines) == 3  # the header and one line a row
    assert lines[0].split() == ["SERVICE", "STATE", "READY", "RESTARTS", "URL"]
    assert lines[1].split()[:5] == ["notification-dispatcher", "healthy", "2/2", "0",
                                    "http://127.0.0.1:20001"]
    assert lines[1].endswith("SyntaxError: invalid syntax; the previous instance keeps serving")
    assert len(lines[1]) > 80 and "…" not in text
    assert all(line == line.rstrip() for line in lines)  # no padding after the last cell


def test_at_80_columns_the_note_goes_on_a_continuation_line() -> None:
    lines = render(COLUMNS, ROWS, 80).splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == ["SERVICE", "STATE", "READY", "RESTARTS", "URL"]
    assert lines[1].split() == ["notification-dispatcher", "healthy", "2/2", "0",
                                "http://127.0.0.1:20001"]
    note = [ln for ln in lines[2:] if ln.startswith("    ")]  # indented under its row
    assert note and " ".join(" ".join(note).split()) == (
        "last reload failed: api/app.py line 3: SyntaxError: invalid syntax; the previous "
        "instance keeps serving")
    assert lines[-1].split() == ["db", "completed", "0/1", "0", "-"]
    assert "…" not in "\n".join(lines)


def test_at_120_columns_the_note_wraps_in_its_column() -> None:
    text = render(COLUMNS, ROWS, 120)
    lines = text.splitlines()
    assert all(len(line) <= 120 for line in lines), lines
    column = lines[1].index("last reload failed")  # beside the row, not under it
    assert lines[1].startswith("notification-dispatcher")
    assert lines[2][:column].strip() == "" and lines[2][column:].strip()  # continues there
    assert " ".join(text.split()).count("keeps serving") == 1
    assert all(word in text for word in WORDS) and "…" not in text


def test_a_table_that_fits_is_one_line_a_row() -> None:
    lines = render(COLUMNS, ROWS, 200).splitlines()
    assert len(lines) == 3 and lines == render(COLUMNS, ROWS, None).splitlines()


def test_headers_and_fixed_cells_stay_whole_even_when_wider_than_the_terminal() -> None:
    columns = [*COLUMNS[:5], Column("CPU"), Column("MEMORY"), COLUMNS[5]]
    rows = [[*r[:5], "12.5%", "130.2 MiB", r[5]] for r in ROWS]
    text = render(columns, rows, 60)  # the fixed columns alone need more than 60
    assert text.splitlines()[0].split() == ["SERVICE", "STATE", "READY", "RESTARTS", "URL",
                                            "CPU", "MEMORY"]
    assert all(word in text for word in [*WORDS, "130.2 MiB"]) and "…" not in text


def test_the_rightmost_wrapping_columns_go_under_their_row_with_their_header() -> None:
    columns = [Column("NAME"), Column("CREATED"), Column("SIZE"),
               Column("SERVICES", wrap=True), Column("DATASETS", wrap=True)]
    rows = [["before-migration (auto)", "2026-11-24T10:00:00", "46.1 MiB",
             "db (postgres 16.4), cache (redis 7.2)", "seed, demo-users"]]
    lines = render(columns, rows, 80).splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == ["NAME", "CREATED", "SIZE", "SERVICES"]
    assert lines[1].startswith("before-migration (auto)  2026-11-24T10:00:00  46.1 MiB  db")
    assert lines[-1] == "    DATASETS: seed, demo-users"
    assert "cache (redis 7.2)" in " ".join(" ".join(lines).split())
