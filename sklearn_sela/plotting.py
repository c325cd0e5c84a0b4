"""Pictures of a self-labelling run: cluster montages and label stability.

* :func:`cluster_montage` / :func:`plot_cluster_montage` -- one row of
  sample images per cluster, as in figures A.5-A.8 of the SeLa paper (Asano
  et al., ICLR 2020), the quickest way to see what a clustering found;
* :func:`plot_label_nmi` -- normalised mutual information (NMI) between
  consecutive self-labellings over training (how much each Sinkhorn step
  still changes the labels), and, when recorded, NMI with the true classes
  (paper, figure A.1).

matplotlib is imported inside the plotting functions only, so the package
works without it; :func:`cluster_montage` needs only numpy and Pillow.
Without an ``ax`` the functions draw on a new :class:`matplotlib.figure.Figure`
that is not registered with :mod:`matplotlib.pyplot` (no GUI window, nothing
to close), which is what scripts and the ``sela`` command want; pass an
``ax`` from ``plt.subplots()`` to draw in a notebook or a gallery example.
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


def _select(labels, n_per_cluster, max_clusters, random_state):
    rng = np.random.default_rng(random_state)
    clusters, sizes = np.unique(labels, return_counts=True)
    if max_clusters is not None and clusters.size > max_clusters:
        keep = np.sort(rng.choice(clusters.size, size=max_clusters, replace=False))
        clusters, sizes = clusters[keep], sizes[keep]
    rows = []
    for c in clusters:
        members = np.flatnonzero(labels == c)
        pick = rng.choice(members, size=min(n_per_cluster, members.size), replace=False)
        rows.append(np.sort(pick))
    return clusters, sizes, rows


def cluster_montage(
    images,
    labels,
    *,
    n_per_cluster=10,
    max_clusters=20,
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
        At most this many rows; when there are more clusters, a random subset
        of them is shown (in label order). None shows all.
    thumb_size : int, default=64
        Images whose longer side exceeds this are shrunk to it (all cells have
        the size of the first sampled image, scaled this way).
    padding : int, default=1
        Blank pixels between cells.
    random_state : int or None, default=0
        Seeds the choice of clusters and of images.

    Returns
    -------
    canvas : ndarray of shape (height, width, 3) or (height, width)
        float32 in ``[0, 1]``; 2-D when every image is grayscale. Blank
        cells and padding are white.
    clusters : ndarray of shape (n_rows,)
        The cluster label of each row.
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
    clusters, sizes, rows = _select(labels, int(n_per_cluster), max_clusters, random_state)
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


def _new_axes(figsize, caller):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            f"{caller} needs matplotlib, which is not installed; install it "
            "with `pip install matplotlib` (cluster_montage gives the montage "
            "as an array without it)."
        ) from None

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def plot_cluster_montage(
    images,
    labels,
    *,
    n_per_cluster=10,
    max_clusters=20,
    thumb_size=64,
    random_state=0,
    title=None,
    ax=None,
    path=None,
):
    """Plot a montage of each cluster's images, one row per cluster.

    Like figures A.5-A.8 of the SeLa paper: a random sample of images for
    each cluster, the row labelled with the cluster id and size. See
    :func:`cluster_montage` for how images are read and arranged.

    Parameters
    ----------
    images : array-like or indexable of length n_samples
        See :func:`cluster_montage`.
    labels : array-like of shape (n_samples,)
        Cluster label of each image.
    n_per_cluster : int, default=10
        Images per row.
    max_clusters : int or None, default=20
        At most this many rows (a random subset of the clusters).
    thumb_size : int, default=64
        Longest side of a cell in pixels.
    random_state : int or None, default=0
        Seeds the choice of clusters and images.
    title : str, default=None
        Axes title. A note is appended when not all clusters are shown.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure (not managed by pyplot) when None.
    path : str or path-like, default=None
        If given, the figure is saved there (PNG by extension).

    Returns
    -------
    fig : matplotlib Figure
        The figure drawn on.
    """
    canvas, clusters, sizes = cluster_montage(
        images,
        labels,
        n_per_cluster=n_per_cluster,
        max_clusters=max_clusters,
        thumb_size=thumb_size,
        padding=1,
        random_state=random_state,
    )
    n_rows = clusters.size
    cell_h = canvas.shape[0] / n_rows
    if ax is None:
        n_cols_px = canvas.shape[1]
        width = 1.6 + 0.55 * n_cols_px / cell_h
        figsize = (min(width, 16.0), min(0.6 + 0.55 * n_rows, 40.0))
        fig, ax = _new_axes(figsize, "plot_cluster_montage")
    else:
        fig = ax.figure
    small = canvas.shape[0] / n_rows < 32
    ax.imshow(
        canvas,
        cmap="gray" if canvas.ndim == 2 else None,
        vmin=0.0,
        vmax=1.0,
        # Nearest keeps tiny images (8x8 digits) crisp instead of blurred.
        interpolation="nearest" if small else "antialiased",
    )
    ax.set_yticks((np.arange(n_rows) + 0.5) * cell_h - 0.5)
    ax.set_yticklabels([f"{c} (n={s})" for c, s in zip(clusters, sizes)])
    ax.set_xticks([])
    ax.tick_params(axis="y", length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_ylabel("cluster (size)")
    n_total = np.unique(np.asarray(labels)).size
    note = f" ({n_rows} of {n_total} clusters)" if n_rows < n_total else ""
    if title is not None or note:
        ax.set_title((title or "Clusters") + note)
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

    Parameters
    ----------
    history : skorch History or list of dict
        ``est.history_``; rows without ``"label_update"`` are ignored.
    title : str, default=None
        Axes title.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure (not managed by pyplot) when None.
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
    """
    rows = _label_updates(history)
    if not rows:
        raise ValueError(
            "The history holds no label update (was the model trained with "
            "n_label_updates=0?)."
        )
    if ax is None:
        fig, ax = _new_axes((6.4, 3.6), "plot_label_nmi")
    else:
        fig = ax.figure
    # A row's label update runs at the start of its epoch: after epoch-1
    # epochs of training (skorch numbers epochs from 1).
    epochs = np.array([row["epoch"] - 1 for row in rows])
    nmi = np.array([row["label_update"]["nmi_prev"] for row in rows], dtype=float)
    n_heads = nmi.shape[1]
    for t in range(n_heads):
        label = "vs previous labels" + (f", head {t}" if n_heads > 1 else "")
        ax.plot(epochs, nmi[:, t], marker="o", markersize=3, label=label)
    truth_rows = [row for row in rows if "nmi_true" in row]
    if truth_rows:
        te = np.array([row["epoch"] - 1 for row in truth_rows])
        tv = np.array([row["nmi_true"] for row in truth_rows], dtype=float).reshape(len(te), -1)
        for t in range(tv.shape[1]):
            label = "vs true classes" + (f", head {t}" if tv.shape[1] > 1 else "")
            ax.plot(te, tv[:, t], linestyle="--", marker=".", label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch of the label update")
    ax.set_ylabel("NMI")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title or "Stability of the self-labels")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
