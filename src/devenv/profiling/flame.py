"""An SVG flame graph of sampled stacks: the root at the bottom, each frame as wide as the
time spent in it (and below it), children ordered by name as flamegraph.pl does. Hovering
a box shows its function, time and share (an SVG <title>)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from devenv.profiling.speedscope import Samples

WIDTH = 1200
ROW = 17
PAD = 10
MIN_WIDTH = 0.3  # pixels: narrower boxes are left out
FONT = 12
CHAR = 7.0  # width of a character at FONT, roughly


@dataclass
class _Node:
    name: str
    weight: float = 0.0
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(samples: Samples) -> _Node:
    root = _Node("all")
    for stack, weight in samples.stacks:
        root.weight += weight
        node = root
        for index in stack:
            label = samples.frames[index].label()
            node = node.children.setdefault(label, _Node(label))
            node.weight += weight
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _color(name: str) -> str:
    """Warm colours, the same for the same function in every graph."""
    h = zlib.crc32(name.encode())
    return f"rgb({205 + h % 50},{(h >> 8) % 180 + 40},{(h >> 16) % 55})"


def render(samples: Samples, title: str) -> str:
    root = _tree(samples)
    rows = _depth(root)
    height = rows * ROW + 3 * PAD + FONT * 2
    scale = (WIDTH - 2 * PAD) / root.weight if root.weight else 0.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="{FONT}">',
        f'<rect width="{WIDTH}" height="{height}" fill="#fdfdf6"/>',
        f'<text x="{WIDTH // 2}" y="{PAD + FONT}" text-anchor="middle" font-size="{FONT + 3}">'
        f'{escape(title)}</text>',
    ]
    bottom = height - PAD

    def box(node: _Node, x: float, level: int) -> None:
        width = node.weight * scale
        if width < MIN_WIDTH:
            return
        y = bottom - (level + 1) * ROW
        share = 100 * node.weight / root.weight
        tip = escape(f"{node.name} ({node.weight:.3f} s, {share:.2f}%)")
        fill = "#c8c8c8" if level == 0 else _color(node.name)
        parts.append(f'<g><title>{tip}</title><rect x="{x:.2f}" y="{y}" width="{width:.2f}" '
                     f'height="{ROW - 1}" fill="{fill}" rx="2"/>')
        room = int((width - 6) / CHAR)
        if room >= 3:
            text = node.name if len(node.name) <= room else node.name[:room - 2] + ".."
            parts.append(f'<text x="{x + 3:.2f}" y="{y + ROW - 5}">{escape(text)}</text>')
        parts.append("</g>")
        for child in sorted(node.children.values(), key=lambda c: c.name):
            box(child, x, level + 1)
            x += child.weight * scale

    if root.weight:
        box(root, PAD, 0)
    else:
        parts.append(f'<text x="{PAD}" y="{bottom - ROW}">no samples</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
