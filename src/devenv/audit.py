"""The audit trail: one JSON line per state-changing command in `.devenv/audit.log`, each
chained to the one before by a hash, so an edited, removed or reordered line is found.

A record holds `seq` (1, 2, …), `time` (UTC, ISO 8601), `user` (and `sudo_user`), `command`,
`args` (secrets already redacted by the caller), `exit`, `error`, `duration` (seconds) and
`prev`: the SHA-256 of the previous line's exact text (`GENESIS` for the first). The head
(`audit.head`: the last record's seq and line hash) is written with each append, so lines cut
from the end are found too. The chain has no key: it detects accidental edits, not a
determined attacker who can write `.devenv/` (and so rewrite the file and its head). Appends
hold an exclusive `flock` on the log across reading the last line, writing the new one and
the head: concurrent CLI processes cannot interleave.

Pure but for the two files: `append`, `read`, and `verify` (which works on lines).
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.core.atomic import write_atomic
from devenv.core.paths import PRIVATE_FILE

GENESIS = "0" * 64
LOG_NAME = "audit.log"
HEAD_NAME = "audit.head"
_TAIL_CHUNK = 4096


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def head_path(log: Path) -> Path:
    return log.with_name(HEAD_NAME)


def append(log: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """Add `record` (without seq and prev) as the log's next line, chained; returns it as
    written. The log and its head are created owner-only (0600)."""
    fd = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, PRIVATE_FILE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        last, ends_clean = _last_line(fd)
        seq, prev = 1, GENESIS
        if last is not None:
            prev = line_hash(last)
            try:
                seq = int(json.loads(last)["seq"]) + 1
            except (ValueError, KeyError, TypeError):  # a broken last line: verify names it
                seq = _count_lines(fd) + (1 if ends_clean else 2)
        written = {"seq": seq, **{k: v for k, v in record.items() if k not in ("seq", "prev")},
                   "prev": prev}
        line = json.dumps(written, separators=(",", ":"), ensure_ascii=False)
        data = ("" if ends_clean else "\n") + line + "\n"
        os.write(fd, data.encode())
        os.fsync(fd)  # the line is on disk before the head that counts it
        write_atomic(head_path(log), json.dumps({"seq": seq, "hash": line_hash(line)}) + "\n",
                     mode=PRIVATE_FILE)
        return written
    finally:
        os.close(fd)  # (releases the lock)


def _last_line(fd: int) -> tuple[str | None, bool]:
    """The file's last line (None: empty), and whether the file ends with a newline."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return None, True
    ends = os.pread(fd, 1, size - 1) == b"\n"
    buf, pos = b"", size - 1 if ends else size  # the last line ends before `pos`
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        cut = buf.rfind(b"\n")
        if cut >= 0:
            return buf[cut + 1:].decode(errors="replace"), ends
    return buf.decode(errors="replace"), ends


def _count_lines(fd: int) -> int:
    size = os.lseek(fd, 0, os.SEEK_END)
    return os.pread(fd, size, 0).count(b"\n")


def read_lines(log: Path) -> list[str]:
    """The log's lines (none when it does not exist), split at "\n" only: a record may hold
    U+2028 or another character str.splitlines() would split at."""
    try:
        text = log.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read(log: Path) -> list[dict[str, Any]]:
    """The records that can be read (verify tells what is wrong with the others)."""
    records = []
    for line in read_lines(log):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_head(log: Path) -> dict[str, Any] | None:
    try:
        head = json.loads(head_path(log).read_text())
    except (OSError, ValueError):
        return None
    return head if isinstance(head, dict) else None


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based (0: the head file)
    message: str  # what is wrong with it, as said after "line N"

    def __str__(self) -> str:
        return f"line {self.line} {self.message}" if self.line else self.message


def verify(lines: list[str], head: Mapping[str, Any] | None) -> list[Problem]:
    """What is wrong with the chain, each problem at the line it concerns, in line order.

    A line that is not a record; a record number out of sequence (removed: the number is
    nowhere; reordered: it is at another line; repeated); a record whose `prev` does not
    match the line of the record before it (that line was edited); and, from the head
    (None: missing), records cut from the end or an edited last line."""
    problems: list[Problem] = []
    seqs: dict[int, int] = {}  # record number -> its (first) line
    parsed: list[dict[str, Any] | None] = []
    for n, line in enumerate(lines, 1):
        record = _record(line)
        parsed.append(record)
        if record is None:
            problems.append(Problem(n, "is not an audit record (edited, or cut short)"))
        elif record["seq"] in seqs:
            problems.append(Problem(n, f"repeats record {record['seq']} (first at line "
                                       f"{seqs[record['seq']]})"))
        else:
            seqs[record["seq"]] = n
    placed = [(n, r["seq"]) for n, r in enumerate(parsed, 1)
              if r is not None and seqs[r["seq"]] == n]
    in_order = _increasing(placed)
    last_seq, last_line = 0, 0
    for n, seq in placed:
        if n not in in_order:  # moved: the fewest moves that explain the order
            before = seqs.get(seq - 1)
            where = f"after record {seq - 1} (line {before})" if before else "first" \
                if seq == 1 else "earlier"
            problems.append(Problem(n, f"is record {seq}, out of order: it belongs {where}"))
            continue
        gone = [s for s in range(last_seq + 1, seq) if s not in seqs]
        unreadable = any(parsed[i - 1] is None for i in range(last_line + 1, n))
        if gone and not unreadable:  # (an unreadable line in between is named already)
            problems.append(Problem(n, f"is record {seq}: {_records(gone)} before it "
                                       f"{'was' if len(gone) == 1 else 'were'} removed"))
        last_seq, last_line = seq, n
    for n, seq in placed:
        record = parsed[n - 1]
        assert record is not None
        if seq == 1:
            if record["prev"] != GENESIS:
                problems.append(Problem(n, "was edited: the first record does not chain from "
                                           "the start"))
        elif seq - 1 in seqs and record["prev"] != line_hash(lines[seqs[seq - 1] - 1]):
            problems.append(Problem(seqs[seq - 1], f"was edited: record {seq} (line {n}) "
                                                   "chains from other content"))
    if lines or head is not None:
        problems += _head_problems(lines, seqs, head)
    return sorted(problems, key=lambda p: p.line)


def _head_problems(lines: list[str], seqs: dict[int, int], head: Mapping[str, Any] | None
                   ) -> list[Problem]:
    try:
        last, digest = int(head["seq"]), str(head["hash"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return [Problem(0, f"{HEAD_NAME} is missing or unreadable: records cut from the end "
                           "cannot be found")]
    top = max(seqs, default=0)
    if last > top:
        gone = list(range(top + 1, last + 1))
        return [Problem(len(lines) + 1, f"should hold {_records(gone)}: "
                                        f"{'it was' if len(gone) == 1 else 'they were'} "
                                        "removed from the end")]
    if last in seqs and line_hash(lines[seqs[last] - 1]) != digest:
        return [Problem(seqs[last], f"was edited: record {last}, the last written, no longer "
                                    f"matches its hash in {HEAD_NAME}")]
    return []


def _increasing(placed: list[tuple[int, int]]) -> set[int]:
    """The lines of a longest run of records whose numbers increase down the file (patience
    sorting): the others are the ones that moved."""
    tails: list[int] = []  # tails[k]: index in `placed` ending the best run of length k+1
    ends: list[int] = []  # and its record number
    back: list[int] = []
    for i, (_, seq) in enumerate(placed):
        k = bisect.bisect_left(ends, seq)
        back.append(tails[k - 1] if k else -1)
        if k == len(tails):
            tails.append(i)
            ends.append(seq)
        else:
            tails[k], ends[k] = i, seq
    kept: set[int] = set()
    i = tails[-1] if tails else -1
    while i >= 0:
        kept.add(placed[i][0])
        i = back[i]
    return kept


def _records(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"record {numbers[0]}"
    return f"records {numbers[0]}-{numbers[-1]}"


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or type(record.get("seq")) is not int \
            or not isinstance(record.get("prev"), str):
        return None
    return record
