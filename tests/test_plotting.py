"""The figures of sklearn_sela.plotting are legible: nothing drawn outside the
canvas, legends beside the data, a readable subset of thousands of clusters.

The figures are rendered with the Agg backend (no pyplot, no window) from
synthetic histories and 8x8 images: T=1 and T=10 heads, K=3000 clusters.
"""

import re

import numpy as np
import pytest

from sklearn_sela.plotting import cluster_montage, plot_cluster_montage, plot_label_nmi

pytest.importorskip("matplotlib")

TOL = 1.0  # pixels


def _history(n_heads, n_updates=8, truth=True, seed=0):
    """A history as SelfLabelClusterer records it: label updates every third
    epoch, rows without one in between, NMI with the truth when asked."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_updates):
        base = (u + 1) / n_updates
        row = {
            "epoch": 3 * u + 1,
            "label_update": {
                "nmi_prev": list(np.clip(base - 0.15 * rng.random(n_heads), 0, 1)),
                "min_size": [1] * n_heads,
            },
        }
        if truth:
            row["nmi_true"] = list(0.6 * base - 0.1 * rng.random(n_heads))
        rows.append(row)
        rows.append({"epoch": 3 * u + 2})
        rows.append({"epoch": 3 * u + 3})
    return rows


def _render(fig):
    """Draw ``fig`` with Agg; return the renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _drawn_ticklabels(ax):
    """The tick labels that are drawn: those of ticks inside the view."""
    out = []
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        lo, hi = sorted(lim)
        for tick in axis.get_major_ticks():
            label = tick.label1
            if (label.get_visible() and label.get_text()
                    and lo - 1e-9 <= tick.get_loc() <= hi + 1e-9):
                out.append(label)
    return out


def _texts(fig):
    """Every visible non-empty text of the figure that is drawn: titles, axis
    labels, tick labels, free texts."""
    texts = list(fig.texts)
    if getattr(fig, "_suptitle", None) is not None:
        texts.append(fig._suptitle)
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        texts += _drawn_ticklabels(ax)
    return [t for t in texts if t.get_visible() and t.get_text()]


def _legends(fig):
    legends = list(fig.legends)
    legends += [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return legends


def _inside(bb, frame):
    return (bb.x0 >= frame.x0 - TOL and bb.y0 >= frame.y0 - TOL
            and bb.x1 <= frame.x1 + TOL and bb.y1 <= frame.y1 + TOL)


def _check_fits(fig, path=None):
    """Every text and legend inside the canvas, no legend on the data, and the
    saved file is the figure as drawn (no cropping or padding at save)."""
    renderer = _render(fig)
    frame = fig.bbox
    for text in _texts(fig):
        bb = text.get_window_extent(renderer)
        assert _inside(bb, frame), f"text {text.get_text()!r} at {bb} outside {frame}"
    for legend in _legends(fig):
        bb = legend.get_window_extent(renderer)
        assert _inside(bb, frame), f"legend at {bb} outside {frame}"
        for ax in fig.axes:
            assert not bb.overlaps(ax.get_window_extent(renderer)), (
                "the legend covers the data area"
            )
    tight = fig.get_tightbbox(renderer)  # inches
    assert _inside(tight.transformed(fig.dpi_scale_trans), frame)
    if path is not None:
        from PIL import Image

        with Image.open(path) as im:
            size = im.size
        expected = np.rint(fig.get_size_inches() * 100).astype(int)
        assert np.all(np.abs(np.array(size) - expected) <= 1), (size, expected)
    return renderer


# -- plot_label_nmi ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_heads", [1, 10])
@pytest.mark.parametrize("title", [None, "Digits: NMI of the self-labels over training"])
def test_label_nmi_fits_and_summarises_heads(n_heads, title, tmp_path):
    history = _history(n_heads)
    fig = plot_label_nmi(history, title=title, path=tmp_path / "nmi.png")
    _check_fits(fig, tmp_path / "nmi.png")
    (ax,) = fig.axes
    assert ax.get_title() == (title or "Stability of the self-labels")
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["vs previous labels",
                                                          "vs true classes"]
    # One line per quantity, whatever the number of heads.
    assert len(ax.lines) == 2
    updates = [row for row in history if "label_update" in row]
    prev = np.array([row["label_update"]["nmi_prev"] for row in updates])
    true = np.array([row["nmi_true"] for row in updates])
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [r["epoch"] - 1 for r in updates])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), np.median(prev, axis=1))
    np.testing.assert_allclose(ax.lines[1].get_ydata(), np.median(true, axis=1))
    if n_heads == 1:
        assert len(ax.collections) == 0  # plainly drawn
        assert legend.get_title().get_text() == ""
    else:
        assert len(ax.collections) == 2  # the min-max bands
        for band, values in zip(ax.collections, (prev, true)):
            ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
            assert np.isclose(ys.min(), values.min()) and np.isclose(ys.max(), values.max())
        assert "10 heads" in legend.get_title().get_text()


def test_label_nmi_without_truth_and_single_update():
    history = [{"epoch": 1, "label_update": {"nmi_prev": [0.2, 0.4, 0.9]}}]
    fig = plot_label_nmi(history)
    _check_fits(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["vs previous labels"]
    assert ax.lines[0].get_ydata().tolist() == [0.4]
    assert ax.get_xlim() == (-1.0, 1.0)


def test_label_nmi_in_a_given_axes():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    assert plot_label_nmi(_history(10), ax=ax) is fig
    _check_fits(fig)


# -- montage ----------------------------------------------------------------------------------


def _many_clusters(k=3000, seed=0):
    """Labels of ``k`` clusters of 3 to 9 members, and 8x8 images."""
    rng = np.random.default_rng(seed)
    sizes = 3 + rng.integers(0, 7, k)
    sizes[rng.choice(k, 5, replace=False)] = [30, 25, 25, 20, 12]
    labels = rng.permutation(np.repeat(np.arange(k), sizes))
    images = rng.random((labels.size, 8, 8)).astype(np.float32)
    return images, labels, sizes


def _rows(ax):
    """(cluster id, size) of each labelled row, top to bottom."""
    rows = []
    for label in ax.get_yticklabels():
        m = re.fullmatch(r"(\d+) \(n=(\d+)\)", label.get_text())
        assert m, label.get_text()
        rows.append((int(m.group(1)), int(m.group(2))))
    return rows


def test_montage_of_3000_clusters_shows_the_largest(tmp_path):
    images, labels, sizes = _many_clusters()
    fig = plot_cluster_montage(images, labels, title="Head 0: 3000 clusters",
                               path=tmp_path / "m.png")
    _check_fits(fig, tmp_path / "m.png")
    (ax,) = fig.axes
    title = ax.get_title()
    assert title.startswith("Head 0: 3000 clusters")
    m = re.search(r"the largest (\d+) of (\d+) clusters", title)
    assert m, title
    shown, total = int(m.group(1)), int(m.group(2))
    assert (shown, total) == (20, 3000)
    rows = _rows(ax)
    assert len(rows) == shown  # every row labelled, no more rows than stated
    assert ax.images[0].get_array().shape[0] == shown * (8 + 1) - 1
    ids, row_sizes = np.array(rows).T
    assert np.array_equal(row_sizes, sizes[ids])  # the labels tell the truth
    assert np.array_equal(row_sizes, np.sort(sizes)[::-1][:shown])  # the largest, first
    assert len(set(ids.tolist())) == shown


def test_montage_caption_without_title_and_random_subset():
    images, labels, sizes = _many_clusters()
    fig = plot_cluster_montage(images, labels, max_clusters=12, n_per_cluster=4)
    _check_fits(fig)
    assert fig.axes[0].get_title() == "The largest 12 of 3000 clusters"
    fig = plot_cluster_montage(images, labels, max_clusters=12, select="random")
    _check_fits(fig)
    assert fig.axes[0].get_title() == "A random 12 of 3000 clusters"
    ids = [c for c, _ in _rows(fig.axes[0])]
    assert len(ids) == 12 and ids == sorted(ids)  # label order


def test_montage_of_all_3000_clusters_labels_only_rows_that_fit():
    images, labels, _ = _many_clusters()
    fig = plot_cluster_montage(images, labels, max_clusters=None, n_per_cluster=3)
    renderer = _check_fits(fig)
    ax = fig.axes[0]
    assert ax.get_title() == ""  # all clusters shown: nothing to say
    boxes = sorted((t.get_window_extent(renderer) for t in ax.get_yticklabels()),
                   key=lambda b: b.y0)
    assert 10 <= len(boxes) < 3000
    for low, high in zip(boxes, boxes[1:]):
        assert low.y1 <= high.y0 + TOL, "row labels overlap"
    assert ax.images[0].get_array().shape[0] == 3000 * 9 - 1


def test_montage_with_few_columns_keeps_a_long_title_inside():
    rng = np.random.default_rng(1)
    images = rng.random((20, 8, 8))
    labels = np.arange(20) % 5
    title = "Partition of the features: 5 clusters, random members of each"
    fig = plot_cluster_montage(images, labels, n_per_cluster=2, title=title)
    _check_fits(fig)
    assert fig.axes[0].get_title() == title
    assert [c for c, _ in _rows(fig.axes[0])] == [0, 1, 2, 3, 4]  # all: label order


def test_cluster_montage_selection():
    labels = np.array([0, 1, 1, 1, 2, 2, 3, 3, 3, 3])
    images = np.zeros((10, 4, 4))
    _, clusters, sizes = cluster_montage(images, labels, max_clusters=2, n_per_cluster=1)
    assert clusters.tolist() == [3, 1] and sizes.tolist() == [4, 3]
    _, clusters, _ = cluster_montage(images, labels, max_clusters=3, select="random",
                                     n_per_cluster=1)
    assert clusters.tolist() == sorted(clusters.tolist())
    # Equal sizes: the pick among them is random, shown in label order.
    eq = np.repeat(np.arange(50), 2)
    picks = {tuple(cluster_montage(np.zeros((100, 4, 4)), eq, max_clusters=5,
                                   random_state=seed)[1].tolist()) for seed in range(5)}
    assert len(picks) > 1 and all(list(p) == sorted(p) for p in picks)
    with pytest.raises(ValueError, match="select"):
        cluster_montage(images, labels, select="biggest")
    with pytest.raises(ValueError, match="max_clusters"):
        plot_cluster_montage(images, labels, max_clusters=0)
