"""What a ``PATH`` argument resolves to (an array or image files), and running
a fitted model over it in chunks."""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import math
import os
import sys

import numpy as np

# Every data and image-file name the command uses comes from here.
from ..data import (
    IMAGE_EXTENSIONS,
    ImageFiles,
    as_dataset,
    check_image_files,
    find_image_files,
)
from .options import given_params
from .runtime import UserError


ARRAY_EXTENSIONS = (".npy", ".npz")


class Input:
    """What a PATH argument resolved to."""

    def __init__(self, data, ids, id_name, kind, *, skipped=(), sizes=(), n_found=None):
        self.data = data          # array or ImageFiles
        self.ids = ids            # first column of the csv outputs
        self.id_name = id_name    # "path" or "index"
        self.kind = kind          # "folder", "image", "array"
        self.skipped = list(skipped)
        self.sizes = list(sizes)  # (width, height) per image file
        self.n_found = n_found

    def __len__(self):
        return len(self.ids)


def _npz_key(path, keys, key):
    """The array of an .npz archive to use: ``key``, its only one, or X."""
    if not keys:
        raise UserError(f"{path!r} holds no arrays.")
    if key is None:
        if len(keys) == 1:
            return keys[0]
        if "X" in keys:
            return "X"
        raise UserError(
            f"{path!r} holds several arrays ({', '.join(keys)}); choose one with --key NAME."
        )
    if key not in keys:
        raise UserError(f"{path!r} has no array named {key!r}; it holds {', '.join(keys)}.")
    return key


def _read_array(path, key):
    try:
        if path.lower().endswith(".npy"):
            if key is not None:
                raise UserError(f"--key only applies to .npz files, not {path!r}.")
            # Memory-mapped: batches are read from disk as needed.
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            return archive[_npz_key(path, list(archive.keys()), key)]
    except UserError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read array file {path!r}: {exc}") from exc


def _load_array(path, key):
    arr = _read_array(path, key)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise UserError(
            f"{path!r} holds an array of dtype {arr.dtype}; a numeric array is needed."
        )
    if arr.ndim not in (2, 3, 4):
        raise UserError(
            f"{path!r} holds an array of shape {arr.shape}; expected (N, D) "
            "features or (N, H, W), (N, H, W, C), (N, C, H, W) images."
        )
    return arr


def _report_skipped(skipped, quiet):
    if not skipped:
        return
    lines = [f"sela: skipped {len(skipped)} unreadable image file(s):"]
    shown = skipped[:20]
    lines += [f"  {p}: {why}" for p, why in shown]
    if len(skipped) > len(shown):
        lines.append(f"  ... and {len(skipped) - len(shown)} more (see the summary)")
    print("\n".join(lines), file=sys.stderr)


def _folder_files(path, exclude):
    """The image files under ``path``, less those in or under ``exclude``."""
    found = find_image_files(path)
    if exclude:
        exclude = tuple(exclude)
        under = tuple(os.path.join(e, "") for e in exclude)
        real = [os.path.realpath(f) for f in found]
        found = [f for f, r in zip(found, real) if r not in exclude and not r.startswith(under)]
    if not found:
        raise UserError(
            f"no image files found in folder {path!r} (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)} at any depth)."
        )
    return found


def _image_mode(good, modes, channels):
    """Grey or RGB: the model's (``channels``), else grey when every image is."""
    if channels is not None:
        return "L" if channels == 1 else "RGB"
    if modes:
        return ImageFiles.common_mode(modes)
    from PIL import Image

    with Image.open(good[0]) as im:
        return ImageFiles.common_mode([im.mode])


def _load_images(path, files, kind, args, channels):
    quiet = getattr(args, "quiet", False)
    check = getattr(args, "check", "full")
    if check == "none":
        good, skipped, sizes, modes = files, [], [], []
    else:
        workers = given_params(args).get("num_workers") or 0
        good, skipped, sizes, modes = check_image_files(
            files, full=check == "full",
            n_jobs=max(1, workers, min(4, os.cpu_count() or 1)), progress=not quiet,
        )
    _report_skipped(skipped, quiet)
    if not good:
        raise UserError(f"none of the {len(files)} image file(s) in {path!r} could be read.")
    return Input(
        ImageFiles(good, _image_mode(good, modes, channels)), good, "path", kind,
        skipped=skipped, sizes=sizes, n_found=len(files),
    )


def load_input(path, args, channels=None, exclude=()):
    """Resolve a PATH argument to an array or an :class:`ImageFiles`.

    ``channels`` (1 or 3) forces the colour mode of image files, to match a
    fitted model; otherwise grey when every image is grey, else RGB. Files
    whose real path is in ``exclude``, or lies under one there, are not
    input (a command's own outputs).
    """
    path = os.fspath(path)
    key = getattr(args, "key", None)
    if not os.path.exists(path):
        raise UserError(f"{path!r} does not exist.")
    if os.path.isdir(path):
        kind, files = "folder", _folder_files(path, exclude)
    elif path.lower().endswith(ARRAY_EXTENSIONS):
        arr = _load_array(path, key)
        return Input(arr, list(range(arr.shape[0])), "index", "array")
    elif path.lower().endswith(IMAGE_EXTENSIONS):
        kind, files = "image", [path]
    else:
        raise UserError(
            f"{path!r} is neither a folder, an image file nor a .npy/.npz array file."
        )
    if key is not None:
        raise UserError("--key only applies to .npz files.")
    return _load_images(path, files, kind, args, channels)


def check_sizes(inp, image_size):
    """Images of several sizes need ``--image-size``."""
    if inp.kind not in ("folder", "image") or image_size is not None:
        return
    distinct = sorted(set(inp.sizes))
    if len(distinct) > 1:
        counts = {s: inp.sizes.count(s) for s in distinct}
        common = max(counts, key=counts.get)
        raise UserError(
            f"the {len(inp)} images have {len(distinct)} different sizes "
            f"(most common {common[1]}x{common[0]}, height x width); pass "
            "--image-size, e.g. --image-size 64, to resize them."
        )


def montage_images(inp, est):
    """Indexable images for the montage, or None for tabular data."""
    if isinstance(inp.data, ImageFiles):
        return inp.data
    if est.input_info_.kind != "image":
        return None
    ds, _ = as_dataset(inp.data)
    return ds


def folder_classes(paths, root):
    """Top-level sub-folder of each path under ``root`` (ImageFolder classes)."""
    out = []
    for p in paths:
        parts = os.path.relpath(p, root).split(os.sep)
        out.append(parts[0] if len(parts) > 1 else "")
    return out


# ---------------------------------------------------------------------------
# Inference over an input, in chunks
# ---------------------------------------------------------------------------


def _chunks(n, batch_size, target=50):
    """Slices covering ``range(n)``, about ``target`` of them, batch aligned."""
    size = max(batch_size, math.ceil(n / target / batch_size) * batch_size)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _subset(data, sl):
    if isinstance(data, ImageFiles):
        return ImageFiles(data.paths[sl], data.mode)
    return data[sl]


def infer(est, data, what, quiet, desc):
    """Features of ``data``, or the probabilities of the estimator's clusters
    followed by those of every head, chunked for a progress bar."""
    from tqdm.auto import tqdm

    parts = []
    for sl in tqdm(
        _chunks(len(data), est.net_.batch_size), desc=desc, unit="chunk",
        disable=True if quiet else None, file=sys.stderr, leave=False,
    ):
        chunk = _subset(data, sl)
        if what == "features":
            parts.append(est.transform(chunk))
        else:
            heads = est.predict_proba_heads(chunk)
            parts.append([heads[est.head_]] + heads)
    if what == "features":
        return np.concatenate(parts)
    return [np.concatenate([p[t] for p in parts]) for t in range(len(parts[0]))]
