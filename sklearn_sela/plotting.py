"""Pictures of a self-labelling run: cluster montages and label stability.

* :func:`cluster_montage` / :func:`plot_cluster_montage` -- one row of
  sample images per cluster, as in figures A.5-A.8 of the SeLa paper (Asano
  et al., ICLR 2020), the quickest way to see what a clustering found; with
  many clusters (say 3000) the largest ones are shown, and the title says how
  many of how many;
* :func:`plot_label_nmi` -- normalised mutual information (NMI) between
  consecutive self-labellings over training (how much each Sinkhorn step
  still changes the labels), and, when recorded, NMI with the true classes
  (paper, figure A.1); with several heads, their median and range.

matplotlib is imported inside the plotting functions only, so the package
works without it; :func:`cluster_montage` needs only numpy and Pillow.
Without an ``ax`` the functions draw on a new :class:`matplotlib.figure.Figure`
that is not registered with :mod:`matplotlib.pyplot` (no GUI window, nothing
to close), which is what scripts and the ``sela`` command want. That figure
is sized around its axes so that the title, labels and legend lie inside it
(nothing is cut off when it is saved as it is). Pass an ``ax`` from
``plt.subplots(layout="constrained")`` to draw in a notebook or a gallery
example; legends are placed beside the axes, outside the data.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import numpy as np

__all__ = ["cluster_montage", "plot_cluster_montage", "plot_label_nmi"]


def _as_hwc(image):
    """One image as a float ``(H, W, C)`` array (C in {1, 3}), values as given."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3:
        if arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)
        elif arr.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"Cannot display an image of shape {arr.shape}: expected "
                "(H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4}."
            )
    else:
        raise ValueError(
            f"Cannot display an image with {arr.ndim} dimensions (shape {arr.shape})."
        )
    if arr.shape[-1] == 4:  # drop alpha
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32)


def _resize(img, hw):
    """Resize a float ``(H, W, C)`` image in [0, 1] to ``hw`` with Pillow."""
    if img.shape[:2] == tuple(hw):
        return img
    from PIL import Image

    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    pil = Image.fromarray(u8[:, :, 0] if u8.shape[-1] == 1 else u8)
    pil = pil.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    out = np.asarray(pil, dtype=np.float32) / 255.0
    return out[:, :, None] if out.ndim == 2 else out


_SELECT = ("largest", "random")


def _check_selection(max_clusters, select):
    if max_clusters is not None and int(max_clusters) < 1:
        raise ValueError(f"max_clusters must be >= 1 or None, got {max_clusters}.")
    if select not in _SELECT:
        raise ValueError(f"select must be one of {_SELECT}, got {select!r}.")


def _select(labels, n_per_cluster, max_clusters, select, random_state):
    rng = np.random.default_rng(random_state)
    clusters, sizes = np.unique(labels, return_counts=True)
    if max_clusters is not None and clusters.size > max_clusters:
        if select == "largest":
            # Ties are broken at random: SeLa's equipartition makes many
            # clusters equal in size, and the lowest ids are no better a pick.
            keep = np.lexsort((rng.random(clusters.size), -sizes))[: int(max_clusters)]
            # Largest first, equal sizes in label order.
            keep = keep[np.lexsort((clusters[keep], -sizes[keep]))]
        else:
            keep = np.sort(rng.choice(clusters.size, size=int(max_clusters), replace=False))
        clusters, sizes = clusters[keep], sizes[keep]
    # Members of each cluster in index order, without a pass over all the
    # labels per cluster (thousands of clusters, maybe millions of samples).
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], clusters)
    rows = []
    for start, size in zip(starts, sizes):
        members = order[start : start + size]
        pick = rng.choice(members, size=min(n_per_cluster, members.size), replace=False)
        rows.append(np.sort(pick))
    return clusters, sizes, rows


def cluster_montage(
    images,
    labels,
    *,
    n_per_cluster=10,
    max_clusters=20,
    select="largest",
    thumb_size=64,
    padding=1,
    random_state=0,
):
    """Arrange random members of each cluster in a grid, one row per cluster.

    Only the sampled images are read (``images[i]`` is called for them
    alone), so ``images`` may be a lazy dataset of files.

    Parameters
    ----------
    images : array-like or indexable of length n_samples
        ``images[i]`` is an image of shape ``(H, W)``, ``(H, W, C)`` or
        ``(C, H, W)`` with ``C`` in {1, 3, 4} (alpha is dropped): a numpy
        array, torch tensor or PIL image. ``uint8`` images are divided by
        255; float images in ``[0, 1]`` are shown as they are, others are
        rescaled to ``[0, 1]`` with the minimum and maximum of the sampled
        images.
    labels : array-like of shape (n_samples,)
        Cluster label of each image.
    n_per_cluster : int, default=10
        Images per row (fewer when a cluster is smaller; the rest of the row
        stays blank).
    max_clusters : int or None, default=20
        At most this many rows. When there are more clusters, ``select``
        says which are shown. None shows all. When all clusters are shown,
        the rows are in label order.
    select : {"largest", "random"}, default="largest"
        Which clusters to show when there are more than ``max_clusters``:
        the most populous (rows from the largest down; clusters of equal
        size, common with SeLa's equipartition, are drawn at random), or a
        random subset (rows in label order).
    thumb_size : int, default=64
        Images whose longer side exceeds this are shrunk to it (all cells have
        the size of the first sampled image, scaled this way).
    padding : int, default=1
        Blank pixels between cells.
    random_state : int or None, default=0
        Seeds the choice of clusters (random ones, or among equal sizes) and
        of images.

    Returns
    -------
    canvas : ndarray of shape (height, width, 3) or (height, width)
        float32 in ``[0, 1]``; 2-D when every image is grayscale. Blank
        cells and padding are white.
    clusters : ndarray of shape (n_rows,)
        The cluster label of each row, from top to bottom.
    sizes : ndarray of shape (n_rows,)
        The number of samples in each row's cluster.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_sela.plotting import cluster_montage
    >>> images = np.zeros((6, 8, 8), dtype=np.uint8)
    >>> canvas, clusters, sizes = cluster_montage(images, [0, 0, 0, 1, 1, 2],
    ...                                           n_per_cluster=2)
    >>> canvas.shape, clusters.tolist(), sizes.tolist()
    ((26, 17), [0, 1, 2], [3, 2, 1])
    >>> _, clusters, sizes = cluster_montage(images, [0, 1, 1, 1, 2, 2],
    ...                                      n_per_cluster=2, max_clusters=2)
    >>> clusters.tolist(), sizes.tolist()  # the two largest, largest first
    ([1, 2], [3, 2])
    """
    labels = np.asarray(labels).ravel()
    try:
        n_images = len(images)
    except TypeError as exc:
        raise TypeError("images must be an array-like or a sized sequence.") from exc
    if n_images != labels.shape[0]:
        raise ValueError(
            f"images has {n_images} entries but labels has {labels.shape[0]}."
        )
    if labels.shape[0] == 0:
        raise ValueError("cluster_montage needs at least one image.")
    if int(n_per_cluster) < 1:
        raise ValueError(f"n_per_cluster must be >= 1, got {n_per_cluster}.")
    _check_selection(max_clusters, select)
    clusters, sizes, rows = _select(
        labels, int(n_per_cluster), max_clusters, select, random_state
    )
    picked = {int(i): _as_hwc(images[int(i)]) for row in rows for i in row}
    lo = min(float(im.min()) for im in picked.values())
    hi = max(float(im.max()) for im in picked.values())
    if lo < 0.0 or hi > 1.0:
        scale = hi - lo if hi > lo else 1.0
        picked = {i: (im - lo) / scale for i, im in picked.items()}
    first = picked[int(rows[0][0])]
    h, w = first.shape[:2]
    shrink = min(1.0, thumb_size / max(h, w))
    hw = (max(1, int(round(h * shrink))), max(1, int(round(w * shrink))))
    gray = all(im.shape[-1] == 1 for im in picked.values())
    channels = 1 if gray else 3
    n_cols = max(len(row) for row in rows)
    pad = int(padding)
    canvas = np.ones(
        (len(rows) * (hw[0] + pad) - pad, n_cols * (hw[1] + pad) - pad, channels),
        dtype=np.float32,
    )
    for r, row in enumerate(rows):
        for c, i in enumerate(row):
            im = _resize(picked[int(i)], hw)
            if im.shape[-1] != channels:
                im = np.repeat(im, channels, axis=-1)
            y, x = r * (hw[0] + pad), c * (hw[1] + pad)
            canvas[y : y + hw[0], x : x + hw[1]] = im
    np.clip(canvas, 0.0, 1.0, out=canvas)
    return (canvas[:, :, 0] if gray else canvas), clusters, sizes


def _new_axes(axes_size, caller):
    """A new figure (no pyplot) with one axes of ``axes_size`` inches.

    The figure is brought to its final size by :func:`_fit_figure` once
    everything is drawn.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            f"{caller} needs matplotlib, which is not installed; install it "
            "with `pip install matplotlib` (cluster_montage gives the montage "
            "as an array without it)."
        ) from None

    w, h = axes_size
    fig = Figure(figsize=(w + 2.0, h + 2.0))
    ax = fig.add_axes([1.0 / (w + 2.0), 1.0 / (h + 2.0), w / (w + 2.0), h / (h + 2.0)])
    return fig, ax


def _fit_figure(fig, ax, pad=0.1):
    """Size ``fig`` so that all that is drawn around ``ax`` lies inside it.

    The axes keeps its size in inches (so an image keeps its aspect); the
    margins become what its title, labels, tick labels and legend take, plus
    ``pad`` inches. The figure gets an Agg canvas, which measures the text
    (without drawing) and renders the figure on ``fig.canvas.draw()``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig_w, fig_h = fig.get_size_inches()
    pos = ax.get_position()
    w_in, h_in = pos.width * fig_w, pos.height * fig_h
    # Text has a fixed size in inches and the axes too, so the margins do
    # not change with the figure size: the second pass only confirms.
    for _ in range(2):
        renderer = canvas.get_renderer()
        box = ax.get_window_extent(renderer)
        tight = ax.get_tightbbox(renderer)
        dpi = fig.dpi
        left = max(box.x0 - tight.x0, 0.0) / dpi + pad
        right = max(tight.x1 - box.x1, 0.0) / dpi + pad
        bottom = max(box.y0 - tight.y0, 0.0) / dpi + pad
        top = max(tight.y1 - box.y1, 0.0) / dpi + pad
        width, height = left + w_in + right, bottom + h_in + top
        fig.set_size_inches(width, height)
        ax.set_position([left / width, bottom / height, w_in / width, h_in / height])


# Largest montage drawn (inches of images, height and width) and the size of
# a row; the figure adds the labels and title around it.
_MONTAGE_MAX_IN = (40.0, 16.0)
_ROW_IN = (0.55, 1.0)


def plot_cluster_montage(
    images,
    labels,
    *,
    n_per_cluster=10,
    max_clusters=20,
    select="largest",
    thumb_size=64,
    random_state=0,
    title=None,
    ax=None,
    path=None,
):
    """Plot a montage of each cluster's images, one row per cluster.

    Like figures A.5-A.8 of the SeLa paper: a random sample of images for
    each cluster, the row labelled with the cluster id and size. With many
    clusters (thousands) the ``max_clusters`` largest are shown, and the
    title says so, e.g. "the largest 20 of 3000 clusters". See
    :func:`cluster_montage` for how images are read, chosen and arranged.

    Parameters
    ----------
    images : array-like or indexable of length n_samples
        See :func:`cluster_montage`.
    labels : array-like of shape (n_samples,)
        Cluster label of each image.
    n_per_cluster : int, default=10
        Images per row.
    max_clusters : int or None, default=20
        At most this many rows; None shows every cluster (with thousands of
        clusters only some rows can then be labelled).
    select : {"largest", "random"}, default="largest"
        Which clusters to show when there are more than ``max_clusters``:
        the most populous, largest first, or a random subset.
    thumb_size : int, default=64
        Longest side of a cell in pixels.
    random_state : int or None, default=0
        Seeds the choice of clusters and images.
    title : str, default=None
        Axes title. When not all clusters are shown, a line saying which is
        added below it (or is the title when None).
    ax : matplotlib Axes, default=None
        Where to draw. When None, a new figure (not managed by pyplot) is
        sized to the montage, with room for the title and the row labels.
    path : str or path-like, default=None
        If given, the figure is saved there (PNG by extension).

    Returns
    -------
    fig : matplotlib Figure
        The figure drawn on.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_sela.plotting import plot_cluster_montage
    >>> labels = np.arange(6000) % 3000
    >>> labels[:40] = 7  # one large cluster
    >>> fig = plot_cluster_montage(np.zeros((6000, 8, 8)), labels)
    >>> fig.axes[0].get_title()
    'The largest 20 of 3000 clusters'
    >>> fig.axes[0].get_yticklabels()[0].get_text()  # cluster id (size)
    '7 (n=41)'
    """
    _check_selection(max_clusters, select)
    pad = 1
    canvas, clusters, sizes = cluster_montage(
        images,
        labels,
        n_per_cluster=n_per_cluster,
        max_clusters=max_clusters,
        select=select,
        thumb_size=thumb_size,
        padding=pad,
        random_state=random_state,
    )
    n_rows = clusters.size
    row_px = (canvas.shape[0] + pad) / n_rows  # cell height plus padding
    own = ax is None
    if own:
        row_in = min(max(_ROW_IN[0], row_px / 100.0), _ROW_IN[1])
        row_in = min(
            row_in,
            _MONTAGE_MAX_IN[0] / n_rows,
            _MONTAGE_MAX_IN[1] * row_px / canvas.shape[1],
        )
        fig, ax = _new_axes(
            (canvas.shape[1] / row_px * row_in, canvas.shape[0] / row_px * row_in),
            "plot_cluster_montage",
        )
    else:
        fig = ax.figure
    small = row_px - pad < 32
    ax.imshow(
        canvas,
        cmap="gray" if canvas.ndim == 2 else None,
        vmin=0.0,
        vmax=1.0,
        # Nearest keeps tiny images (8x8 digits) crisp instead of blurred.
        interpolation="nearest" if small else "antialiased",
    )
    # Label every row if the rows are tall enough for the text, else every
    # step-th row (the montage shows at most one image row per label).
    box = ax.get_position()
    ax_w_in, ax_h_in = box.width * fig.get_figwidth(), box.height * fig.get_figheight()
    row_shown_in = row_px * min(ax_w_in / canvas.shape[1], ax_h_in / canvas.shape[0])
    from matplotlib.font_manager import FontProperties

    label_in = FontProperties(size="medium").get_size_in_points() / 72.0
    step = max(1, int(np.ceil(1.25 * label_in / max(row_shown_in, 1e-9))))
    shown = np.arange(0, n_rows, step)
    ax.set_yticks(shown * row_px + (row_px - pad) / 2.0 - 0.5)
    ax.set_yticklabels([f"{clusters[r]} (n={sizes[r]})" for r in shown])
    ax.set_xticks([])
    ax.tick_params(axis="y", length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_ylabel("cluster (size)" if step == 1 else f"cluster (size), 1 row in {step} labelled")
    n_total = np.unique(np.asarray(labels).ravel()).size
    if n_rows < n_total:
        which = "the largest" if select == "largest" else "a random"
        note = f"{which} {n_rows} of {n_total} clusters"
        title = note[0].upper() + note[1:] if title is None else f"{title}\n({note})"
    if title is not None:
        ax.set_title(title)
    if own:
        _fit_figure(fig, ax)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _label_updates(history):
    rows = list(history)
    out = []
    for row in rows:
        if "label_update" in row:
            out.append(row)
    return out


def _plot_heads(ax, x, values, color, **line_kw):
    """Plot ``values`` (n_points, n_heads) over ``x``: the one head as it is,
    or the median over heads with the min-max range shaded. Returns the
    legend handle."""
    if values.shape[1] == 1:
        (line,) = ax.plot(x, values[:, 0], color=color, **line_kw)
        return line
    lo, hi = values.min(axis=1), values.max(axis=1)
    if x.size > 1:
        band = ax.fill_between(x, lo, hi, color=color, alpha=0.25, linewidth=0)
    else:  # a single update: the range as a bar
        band = ax.vlines(x, lo, hi, color=color, alpha=0.25, linewidth=8)
    (line,) = ax.plot(x, np.median(values, axis=1), color=color, **line_kw)
    return (band, line)


def plot_label_nmi(history, *, title=None, ax=None, path=None):
    """Plot the NMI between consecutive self-labellings over training.

    Each self-labelling step (a Sinkhorn solve, recorded by the
    ``label_update`` entries of a fitted
    :class:`~sklearn_sela.SelfLabelClusterer`'s ``history_``) is compared
    with the labelling before it. Values near 1 mean the labels have
    settled; the first update is compared with the random initial labels, so
    its value is near 0. When the history rows also hold ``"nmi_true"``
    (recorded by :class:`~sklearn_sela.metrics.TrueLabelNMI`), the NMI with
    the true classes is drawn as well (dashed), as in figure A.1 of the
    paper.

    With one head its values are drawn as they are. With several heads
    (``n_heads=10`` by default) each quantity is drawn as the median over
    the heads (a line) and the range from the lowest to the highest head
    (a shaded band). The legend lies to the right of the axes, outside the
    data.

    Parameters
    ----------
    history : skorch History or list of dict
        ``est.history_``; rows without ``"label_update"`` are ignored.
    title : str, default=None
        Axes title.
    ax : matplotlib Axes, default=None
        Where to draw. When None, a new figure (not managed by pyplot) is
        sized to hold the axes, its labels and the legend. A given ``ax``
        should leave room on its right for the legend, e.g. an axes of
        ``plt.subplots(layout="constrained")``.
    path : str or path-like, default=None
        If given, the figure is saved there.

    Returns
    -------
    fig : matplotlib Figure
        The figure drawn on.

    Raises
    ------
    ValueError
        If the history holds no label update.

    Examples
    --------
    >>> from sklearn_sela.plotting import plot_label_nmi
    >>> history = [{"epoch": 1, "label_update": {"nmi_prev": [0.0, 0.1, 0.2]}},
    ...            {"epoch": 4, "label_update": {"nmi_prev": [0.7, 0.8, 0.9]}}]
    >>> ax = plot_label_nmi(history).axes[0]
    >>> ax.lines[0].get_ydata().tolist()  # the median of the three heads
    [0.1, 0.8]
    >>> [t.get_text() for t in ax.get_legend().get_texts()]
    ['vs previous labels']
    """
    rows = _label_updates(history)
    if not rows:
        raise ValueError(
            "The history holds no label update (was the model trained with "
            "n_label_updates=0?)."
        )
    own = ax is None
    if own:
        fig, ax = _new_axes((5.0, 3.0), "plot_label_nmi")
    else:
        fig = ax.figure
    # A row's label update runs at the start of its epoch: after epoch-1
    # epochs of training (skorch numbers epochs from 1).
    epochs = np.array([row["epoch"] - 1 for row in rows])
    nmi = np.array([row["label_update"]["nmi_prev"] for row in rows], dtype=float)
    nmi = nmi.reshape(len(rows), -1)
    n_heads = nmi.shape[1]
    handles = [_plot_heads(ax, epochs, nmi, "C0", marker="o", markersize=3)]
    names = ["vs previous labels"]
    truth_rows = [row for row in rows if "nmi_true" in row]
    if truth_rows:
        te = np.array([row["epoch"] - 1 for row in truth_rows])
        tv = np.array([row["nmi_true"] for row in truth_rows], dtype=float).reshape(len(te), -1)
        handles.append(_plot_heads(ax, te, tv, "C1", linestyle="--", marker="."))
        names.append("vs true classes")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if np.ptp(epochs) == 0:  # a single update: one epoch either side
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    ax.set_xlabel("epoch of the label update")
    ax.set_ylabel("NMI")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(
        handles,
        names,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize="small",
        title=f"{n_heads} heads: median,\nmin-max shaded" if n_heads > 1 else None,
        title_fontsize="small",
    )
    ax.set_title(title or "Stability of the self-labels")
    if own:
        _fit_figure(fig, ax)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
