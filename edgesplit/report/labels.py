"""Point labels that neither overlap each other nor cover a marker: each label tries places around its
point, nearest first, measured by matplotlib's renderer; one set apart from its point gets a leader line."""
from dataclasses import dataclass
from typing import Iterator, Sequence

from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation
from matplotlib.transforms import Bbox

GAP_PT = 3.0  # points between a label and its marker, and at least between two labels
RINGS = 10  # how far from its point a label may go: this many label heights beyond the nearest places
# right and up first (where a reader looks), then the other corners, then straight above, below, beside
DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1), (1, 0), (-1, 0))


@dataclass
class Label:
    text: str
    xy: tuple[float, float]  # its point, in data coordinates
    color: str
    marker_pt: float  # the point's marker size (its width, in points): no label covers it


def _beside(px: float, py: float, w: float, h: float, direction: tuple[int, int], dist: float) -> Bbox:
    """A w x h box `dist` pixels from the point (px, py) in `direction` (centred along a zero axis)."""
    dx, dy = direction
    x0 = px + dist if dx > 0 else px - dist - w if dx < 0 else px - w / 2
    y0 = py + dist if dy > 0 else py - dist - h if dy < 0 else py - h / 2
    return Bbox.from_bounds(x0, y0, w, h)


def _area(a: Bbox, b: Bbox) -> float:
    inter = Bbox.intersection(a, b)
    return 0.0 if inter is None else inter.width * inter.height


def _renderer(ax: Axes) -> RendererBase:
    fig = ax.get_figure()
    assert isinstance(fig, Figure)
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # fixes the axis limits and so each point's place on the figure
    return canvas.get_renderer()  # measures text as savefig renders it


def _size(ax: Axes, renderer: RendererBase, label: Label, fontsize: str) -> tuple[float, float]:
    probe = ax.annotate(label.text, label.xy, fontsize=fontsize)
    box = probe.get_window_extent(renderer)
    probe.remove()
    return box.width, box.height


def _candidates(base: float, step: float) -> Iterator[tuple[int, tuple[int, int], float]]:
    for ring in range(RINGS + 1):
        for direction in DIRECTIONS:
            yield ring, direction, base + ring * step


def place_labels(ax: Axes, labels: Sequence[Label], fontsize: str = "small") -> list[Annotation]:
    """Annotate each point with its label at the first free place (inside the axes, off every marker,
    GAP_PT from every other label), rings of places around it nearest first; with none free, the
    place that overlaps least. Labels are placed left to right, then top to bottom: deterministic."""
    renderer = _renderer(ax)
    px_per_pt = ax.figure.dpi / 72.0  # as the renderer turns points into pixels
    gap = GAP_PT * px_per_pt
    where = [tuple(ax.transData.transform(label.xy)) for label in labels]
    markers = [Bbox.from_bounds(x - r, y - r, 2 * r, 2 * r) for (x, y), label in zip(where, labels)
               for r in [label.marker_pt * px_per_pt / 2]]
    area, out = ax.bbox, []
    placed: list[Bbox] = []
    for i in sorted(range(len(labels)), key=lambda k: (where[k][0], -where[k][1])):
        label, (px, py) = labels[i], where[i]
        w, h = _size(ax, renderer, label, fontsize)
        best: tuple[float, int, Bbox] = (float("inf"), 0, Bbox.unit())
        for ring, direction, dist in _candidates(label.marker_pt * px_per_pt / 2 + gap, h + gap):
            box = _beside(px, py, w, h, direction, dist)
            inside = area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
            clash = sum(_area(box.padded(gap / 2), o.padded(gap / 2)) for o in placed) + sum(
                _area(box, m) for m in markers) + (0.0 if inside else w * h)
            if clash < best[0]:
                best = (clash, ring, box)
            if clash == 0.0:
                break
        _, ring, box = best
        placed.append(box)
        arrow = dict(arrowstyle="-", color=label.color, linewidth=0.6, alpha=0.7, shrinkA=0,
                     shrinkB=label.marker_pt / 2) if ring else None
        out.append(ax.annotate(label.text, label.xy, textcoords="offset points", ha="left", va="bottom",
                               xytext=((box.x0 - px) / px_per_pt, (box.y0 - py) / px_per_pt),
                               fontsize=fontsize, color=label.color, arrowprops=arrow))
    return out
