"""Sampled stacks, read from and written as speedscope JSON, and read from Node's .cpuprofile.

A `Samples` is every sample of a profile merged (all threads and processes): each a stack
of frame indices, root first, with a weight in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "https://www.speedscope.app/file-format-schema.json"
UNITS = {"seconds": 1.0, "milliseconds": 1e-3, "microseconds": 1e-6, "nanoseconds": 1e-9}
NOT_CPU = frozenset({"(idle)", "(root)"})  # V8's pseudo-frames that are not work


class ProfileFormatError(ValueError):
    """The file is not a profile this module reads."""


@dataclass(frozen=True)
class Frame:
    name: str
    file: str = ""
    line: int = 0

    def label(self) -> str:
        where = self.file.rsplit("/", 1)[-1]
        return f"{self.name} ({where}:{self.line})" if where else self.name


@dataclass
class Samples:
    frames: list[Frame] = field(default_factory=list)
    stacks: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    _index: dict[Frame, int] = field(default_factory=dict, repr=False)

    def frame(self, frame: Frame) -> int:
        if frame not in self._index:
            self._index[frame] = len(self.frames)
            self.frames.append(frame)
        return self._index[frame]

    def add(self, stack: tuple[int, ...], weight: float) -> None:
        if stack and weight > 0:
            self.stacks.append((stack, weight))

    @property
    def seconds(self) -> float:
        return sum(w for _, w in self.stacks)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def from_speedscope(doc: Any) -> Samples:
    """Every sampled profile of a speedscope document, merged (frames keyed by name, file
    and line)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("profiles"), list):
        raise ProfileFormatError("not a speedscope document (no profiles)")
    raw = doc.get("shared", {}).get("frames", [])
    out = Samples()
    frames = [out.frame(Frame(str(f.get("name", "?")), str(f.get("file") or ""),
                              _int(f.get("line")))) for f in raw]
    for profile in doc["profiles"]:
        if profile.get("type") != "sampled":
            continue  # (evented profiles: not what the samplers here write)
        scale = UNITS.get(profile.get("unit", "none"), 1.0)
        samples, weights = profile.get("samples", []), profile.get("weights", [])
        for i, stack in enumerate(samples):
            weight = weights[i] if i < len(weights) else 1
            try:
                out.add(tuple(frames[j] for j in stack), float(weight) * scale)
            except (IndexError, TypeError) as exc:
                raise ProfileFormatError(f"sample {i} names a frame that is not there") \
                    from exc
    return out


def from_cpuprofile(doc: Any) -> Samples:
    """V8's .cpuprofile (the inspector's Profiler.stop): nodes with call frames and
    children, a node id per sample and the time before each (microseconds). Idle samples
    are not work and are left out."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("nodes"), list):
        raise ProfileFormatError("not a .cpuprofile (no nodes)")
    nodes = {n["id"]: n for n in doc["nodes"]}
    parent: dict[int, int] = {}
    for node in doc["nodes"]:
        for child in node.get("children", []):
            parent[child] = node["id"]
    out = Samples()
    stacks: dict[int, tuple[int, ...]] = {}

    def stack_of(node_id: int) -> tuple[int, ...]:
        if node_id not in stacks:
            chain = []
            at: int | None = node_id
            while at is not None:
                call = nodes[at].get("callFrame", {})
                name = call.get("functionName") or "(anonymous)"
                if name not in NOT_CPU:
                    chain.append(out.frame(Frame(name, str(call.get("url", "")),
                                                 _int(call.get("lineNumber", -1)) + 1)))
                elif name == "(idle)":
                    chain = []
                    break
                at = parent.get(at)
            stacks[node_id] = tuple(reversed(chain))
        return stacks[node_id]

    samples, deltas = doc.get("samples", []), doc.get("timeDeltas", [])
    for i, node_id in enumerate(samples):
        # a sample's time is the gap until the next one (the last: the one before it)
        delta = deltas[i + 1] if i + 1 < len(deltas) else (deltas[i] if i < len(deltas) else 0)
        if node_id in nodes:
            out.add(stack_of(node_id), max(float(delta), 0.0) * 1e-6)
    return out


def to_speedscope(samples: Samples, name: str) -> dict[str, Any]:
    """One sampled profile, weights in seconds."""
    end = samples.seconds
    return {
        "$schema": SCHEMA,
        "shared": {"frames": [{"name": f.name, "file": f.file, "line": f.line}
                              for f in samples.frames]},
        "profiles": [{"type": "sampled", "name": name, "unit": "seconds", "startValue": 0,
                      "endValue": end, "samples": [list(s) for s, _ in samples.stacks],
                      "weights": [w for _, w in samples.stacks]}],
        "name": name, "exporter": "devenv",
    }


def folded(samples: Samples) -> dict[str, float]:
    """Brendan Gregg's folded stacks ("root;child;leaf" → seconds)."""
    out: dict[str, float] = {}
    for stack, weight in samples.stacks:
        key = ";".join(samples.frames[i].label().replace(";", ",") for i in stack)
        out[key] = out.get(key, 0.0) + weight
    return out
