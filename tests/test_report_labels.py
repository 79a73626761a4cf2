"""pareto.png's point labels: none overlaps another or covers a marker, all stay inside the axes,
on crowded points and on the real shrunk quant_lr sweep's (docs/results/quant_lr_digits)."""
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

from edgesplit.report import pareto


def _point(method: str, nbytes: float, acc: float, series: str = "", n: int = 2) -> pareto.Point:
    return pareto.Point((series,) if series else (), series, method, method == "none", [],
                        pareto.Stat(acc, 1.0 if n > 1 else None, n), pareto.stat([nbytes]))


def crowded() -> list[pareto.Point]:
    """Eight methods within half a percent of each other at two byte counts (as around 98% on digits)."""
    return [_point("none", 6.8e6, 98.1), _point("quantize4", 8.5e5, 98.2),
            _point("quantize4_sr_group", 8.8e5, 98.0), _point("quantize2", 4.3e5, 97.9),
            _point("quantize2_sr_group", 4.5e5, 98.0), _point("delta2", 4.6e5, 98.1),
            _point("bottleneck4", 4.3e5, 98.05), _point("delta4", 8.6e5, 98.1)]


QUANT_LR = {  # docs/results/quant_lr_digits/report.md: best val acc1 over 3 seeds per lr
    "0.1": {"none": 97.22, "quantize8": 95.83, "quantize4": 95.74},
    "0.2": {"none": 96.20, "quantize8": 95.56, "quantize4": 95.93},
    "0.4": {"none": 72.13, "quantize8": 13.89, "quantize4": 37.78},
}
BYTES = {"none": 6.82e6, "quantize8": 1.70e6, "quantize4": 8.52e5}  # up + down a batch


def quant_lr() -> list[pareto.Point]:
    return [_point(m, BYTES[m], acc, f"schedule.lr={lr}", 3) for lr, accs in QUANT_LR.items()
            for m, acc in accs.items()]


def _labels(fig: Figure) -> list[tuple[str, Bbox]]:
    """Each point label's text box on the rendered figure (pixels), leader lines left out."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    return [(t.get_text(), Text.get_window_extent(t, renderer)) for t in fig.axes[0].texts
            if isinstance(t, Annotation)]


def _markers(fig: Figure) -> list[Bbox]:
    """The square around each drawn star, dot and frontier ring (pixels), as the figure has them."""
    boxes = []
    for line in fig.axes[0].get_lines():
        if line.get_marker() in ("o", "*"):
            r = line.get_markersize() * fig.dpi / 72 / 2
            xy = line.get_transform().transform(line.get_xydata())
            boxes += [Bbox.from_bounds(x - r, y - r, 2 * r, 2 * r) for x, y in xy]
    return boxes


@pytest.fixture(scope="module")
def drawn() -> dict[str, tuple[Figure, list[tuple[str, Bbox]]]]:
    """Each point set's figure, drawn once, and its labels' boxes."""
    out = {}
    for points in (crowded, quant_lr):
        fig = pareto.plot_pareto(points())
        out[points.__name__] = (fig, _labels(fig))
    return out


@pytest.mark.parametrize("points", [crowded, quant_lr])
def test_no_label_overlaps_another_or_a_marker_and_all_stay_inside(points, drawn) -> None:
    fig, labels = drawn[points.__name__]
    assert sorted(t for t, _ in labels) == sorted(p.method for p in points())
    clashes = [(a, b) for i, (a, ba) in enumerate(labels) for b, bb in labels[i + 1:] if ba.overlaps(bb)]
    assert clashes == []
    markers = _markers(fig)
    assert len(markers) >= len(labels)
    assert [t for t, box in labels if any(box.overlaps(m) for m in markers)] == []
    area = fig.axes[0].bbox  # inside the axes: not over the title, the ticks or the legend
    assert all(area.x0 <= b.x0 and b.x1 <= area.x1 and area.y0 <= b.y0 and b.y1 <= area.y1 for _, b in labels)


def test_a_label_set_apart_from_its_point_has_a_leader_line(drawn) -> None:
    """A label next to its marker (GAP_PT beyond the largest, the star) has none; one farther has one."""
    from edgesplit.report.labels import GAP_PT
    fig, labels = drawn["crowded"]
    near_px = (pareto.STAR_PT / 2 + GAP_PT) * fig.dpi / 72 + 1
    ax, gaps = fig.axes[0], {}
    for (text, box), t in zip(labels, [t for t in ax.texts if isinstance(t, Annotation)]):
        px, py = ax.transData.transform(t.xy)
        gaps[text] = (max(box.x0 - px, px - box.x1, 0, box.y0 - py, py - box.y1), t.arrow_patch is not None)
    assert any(arrow for _, arrow in gaps.values()) and any(not arrow for _, arrow in gaps.values())
    assert all((gap > near_px) == arrow for gap, arrow in gaps.values()), gaps


def test_labels_of_points_at_the_top_stay_inside_the_axes() -> None:
    top = [_point(f"method{i}", 4.3e5, 99.0, n=1) for i in range(6)]  # one place, the highest accuracy
    fig = pareto.plot_pareto(top + [_point("low", 4.3e5, 20.0, n=1), _point("none", 6.8e6, 60.0, n=1)])
    area = fig.axes[0].bbox
    boxes = [b for _, b in _labels(fig)]
    assert len(boxes) == 8 and all(area.y0 <= b.y0 and b.y1 <= area.y1 for b in boxes)
    assert fig.axes[0].get_ylabel() == "best val acc1 (%)"  # one seed each: no "± std"


def test_the_y_label_says_mean_and_std_only_where_a_method_has_several_seeds(drawn) -> None:
    assert drawn["crowded"][0].axes[0].get_ylabel() == "best val acc1 (%), mean ± std over seeds"
