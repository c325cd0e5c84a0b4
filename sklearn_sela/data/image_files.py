"""Image folders: find, check and lazily read image files.

:func:`find_image_files` lists the image files under a folder at any depth,
:func:`check_image_files` opens each once and sorts out those that cannot be
read, and :class:`ImageFiles` is a lazily loading, map-style dataset of image
files, usable with :class:`~sklearn_sela.SelfLabelClusterer` like any other
dataset. The ``sela`` command (:mod:`sklearn_sela.cli`) reads image folders
with them.

PIL and tqdm are imported only when needed.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import errno
import os
import sys
from concurrent.futures import ThreadPoolExecutor

__all__ = ["find_image_files", "check_image_files", "ImageFiles", "IMAGE_EXTENSIONS"]

#: File name endings (lower case) taken as images when walking a folder.
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm",
)
#: PIL modes that hold one grey channel (with or without alpha); anything
#: else is read as RGB. :class:`ImageFiles` picks its mode and
#: :func:`sklearn_sela.data.as_dataset` counts channels with this list.
PIL_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def find_image_files(root, extensions=IMAGE_EXTENSIONS):
    """List the image files under a folder, at any depth, in sorted order.

    Hidden files and folders (names starting with ``"."``, such as macOS's
    ``._photo.jpg`` resource forks) are skipped; symbolic links to folders
    are not followed (they could loop). Whether the files really are images
    is checked by :func:`check_image_files`.

    Parameters
    ----------
    root : str or path-like
        Folder to walk. An ``ImageFolder`` layout (one sub-folder per class)
        works, but any nesting does.
    extensions : tuple of str, default=IMAGE_EXTENSIONS
        Lower-case file name endings taken as images.

    Returns
    -------
    paths : list of str
        ``os.path.join(root, ...)`` for every image file, sorted by path, so
        the order (and hence the rows of ``labels.csv``) is reproducible.
        Empty when the folder holds no image file.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist (a typo would otherwise look like an
        empty folder).
    NotADirectoryError
        If ``root`` is not a folder, e.g. a single image file.
    PermissionError
        If ``root`` cannot be listed. Sub-folders that cannot be listed are
        skipped.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        if not os.path.exists(root):
            raise FileNotFoundError(
                errno.ENOENT, "No such folder to look for image files in", root
            )
        raise NotADirectoryError(
            errno.ENOTDIR,
            "Not a folder: find_image_files lists the image files under a "
            "folder (for one image file, pass [path] to ImageFiles)",
            root,
        )

    def unreadable(exc):
        # A sub-folder that cannot be listed is skipped, like os.walk does;
        # the folder itself is an error, not an empty result.
        if exc.filename == root:
            raise exc

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(extensions):
                found.append(os.path.join(dirpath, name))
    # os.walk lists a folder's files before its sub-folders; sort the paths
    # as a whole so the order does not depend on the walk.
    return sorted(found)


def _check_one(path, full):
    from PIL import Image

    try:
        with Image.open(path) as im:
            # verify() checks the file structure (and PNG checksums) without
            # decoding; the image object is unusable afterwards.
            im.verify()
        if not full:
            with Image.open(path) as im:
                return path, None, im.size, im.mode
        with Image.open(path) as im:
            # verify() misses truncated JPEG data; a full decode catches it.
            im.load()
            return path, None, im.size, im.mode
    except Exception as exc:  # PIL raises many types for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return path, f"{type(exc).__name__}: {reason}".rstrip(": "), None, None


def check_image_files(paths, *, full=True, n_jobs=1, progress=False):
    """Open every image file once and sort out those that cannot be read.

    Parameters
    ----------
    paths : list of str
        Image files, e.g. from :func:`find_image_files`.
    full : bool, default=True
        Decode each image completely (catches truncated files, costs about one
        training epoch of decoding). When False only :meth:`PIL.Image.Image.verify`
        and the header are checked.
    n_jobs : int, default=1
        Threads reading files in parallel (decoding releases the GIL).
    progress : bool, default=False
        Show a progress bar on stderr.

    Returns
    -------
    good : list of str
        Readable files, in the input order.
    skipped : list of (str, str)
        ``(path, reason)`` for each unreadable file.
    sizes : list of (int, int)
        ``(width, height)`` of each good file.
    modes : list of str
        PIL mode of each good file (``"L"``, ``"RGB"``, ...).
    """
    from tqdm.auto import tqdm

    good, skipped, sizes, modes = [], [], [], []

    def results(pool):
        # Executor.map submits every task at once; in slices, a folder of a
        # million files does not hold a million futures.
        step = 4096
        for start in range(0, len(paths), step):
            yield from pool.map(lambda p: _check_one(p, full), paths[start : start + step])

    with ThreadPoolExecutor(max_workers=max(1, int(n_jobs))) as pool:
        for path, error, size, mode in tqdm(
            results(pool), total=len(paths), desc="checking images", unit="img",
            disable=None if progress else True, file=sys.stderr, leave=False,
        ):
            if error is None:
                good.append(path)
                sizes.append(tuple(size))
                modes.append(mode)
            else:
                skipped.append((path, error))
    return good, skipped, sizes, modes


class ImageFiles:
    """Map-style dataset of image files, each opened with PIL when accessed.

    Only the list of paths is held in memory, so folders of any size stream
    from disk; the dataset pickles cheaply for DataLoader workers. Pass it to
    :meth:`SelfLabelClusterer.fit <sklearn_sela.SelfLabelClusterer.fit>`
    (with ``image_size`` when the images differ in size), ``predict`` or
    ``transform``.

    Parameters
    ----------
    paths : list of str
        Image files (see :func:`find_image_files`).
    mode : {"RGB", "L"}, default="RGB"
        Colour mode every image is converted to, so that all items have the
        same number of channels.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from sklearn_sela.data import ImageFiles, find_image_files
    >>> root = tempfile.mkdtemp()
    >>> Image.new("RGB", (12, 10)).save(os.path.join(root, "a.png"))
    >>> ds = ImageFiles(find_image_files(root))
    >>> len(ds), ds[0].size
    (1, (12, 10))
    """

    def __init__(self, paths, mode="RGB"):
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}.")
        self.paths = list(paths)
        self.mode = mode

    @staticmethod
    def common_mode(modes):
        """The ``mode`` to read a set of files of these PIL modes with.

        ``"L"`` when every mode is grey (``"1"``, ``"L"``, ``"I;16"``, ...),
        else ``"RGB"``: one colour (or palette) file makes the whole folder
        colour, so that no file loses its colour.

        Parameters
        ----------
        modes : iterable of str
            PIL modes, e.g. the ``modes`` returned by :func:`check_image_files`.

        Returns
        -------
        mode : {"L", "RGB"}
        """
        return "L" if all(m in PIL_GRAY_MODES for m in modes) else "RGB"

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        from PIL import Image

        path = self.paths[int(index)]
        try:
            with Image.open(path) as im:
                if self.mode == "L" and im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    # High bit depth grey: keep it, sklearn_sela.data scales it
                    # properly (convert("L") would clip).
                    im.load()
                    return im.copy()
                return im.convert(self.mode)
        except OSError as exc:
            raise OSError(f"cannot read image {path!r}: {exc}") from exc
