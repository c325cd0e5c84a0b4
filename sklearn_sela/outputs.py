"""Output folders of the ``sela`` command: written whole, or not at all.

:class:`OutputFolder` stages a command's files in a hidden folder inside the
target and moves them into place only when all are written, so an
interrupted or failed run leaves the previous results as they were. A run's
outputs replace the previous run's as a set (its stale files go), listed in
a manifest per command, ``.sela-COMMAND-outputs.json``; files that sela did
not write are never replaced unless asked, and sela's outputs are never read
back as input.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import glob
import json
import os
import shutil
import tempfile

__all__ = ["OutputFolder"]

_MANIFEST = ".sela-{}-outputs.json"
_STAGE_PREFIX = ".sela-partial-"


class OutputFolder:
    """A command's output folder, staged and committed as a whole.

    Creating one checks, before any work, that the folder can be written
    (by creating the staging folder in it) and that none of ``names`` is a
    file that sela did not write (unless ``overwrite``).

    Parameters
    ----------
    path : str or path-like
        The output folder; created if missing.
    command : str
        The command whose outputs these are: a run replaces the files of the
        previous run of the same command only.
    names : iterable of str
        File names the command may write there.
    overwrite : bool, default=False
        Whether files of those names that sela did not write may be
        replaced.

    Attributes
    ----------
    path : str
        The output folder.
    stage : str
        The staging folder inside it, where the command writes its files.
    previous : list of str
        The files of the previous run (from the manifest).

    Raises
    ------
    OSError
        If the folder cannot be created or written.
    FileExistsError
        If it holds files of those names that sela did not write.
    """

    def __init__(self, path, command, names, *, overwrite=False):
        self.path = os.fspath(path)
        self.manifest = _MANIFEST.format(command)
        os.makedirs(self.path, exist_ok=True)
        self.previous = self._read_manifest(self.manifest)
        ours = {n for m in self._manifests() for n in self._read_manifest(m)}
        foreign = sorted(
            name for name in set(names)
            if os.path.lexists(os.path.join(self.path, name)) and name not in ours
        )
        if foreign and not overwrite:
            raise FileExistsError(
                f"the output folder {self.path!r} holds {', '.join(foreign)}, which "
                "sela did not write; choose another --out folder, or add --overwrite "
                "to replace them."
            )
        try:
            self.stage = tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=self.path)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot write into the output folder {self.path!r}: "
                f"{exc.strerror or exc}"
            ) from None

    def _manifests(self):
        pattern = os.path.join(glob.escape(self.path), _MANIFEST.format("*"))
        return [os.path.basename(m) for m in glob.glob(pattern, include_hidden=True)]

    def _read_manifest(self, name):
        try:
            with open(os.path.join(self.path, name)) as fh:
                files = json.load(fh)["files"]
            return [f for f in files if isinstance(f, str) and os.sep not in f]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def own_paths(self):
        """Real paths of what sela wrote or writes here (never input)."""
        manifests = self._manifests()
        names = set(manifests).union(*(self._read_manifest(m) for m in manifests))
        own = {os.path.realpath(os.path.join(self.path, n)) for n in names}
        with os.scandir(self.path) as entries:
            own |= {os.path.realpath(e.path) for e in entries
                    if e.name.startswith(_STAGE_PREFIX)}
        return own

    def file(self, name):
        """Where to write output ``name`` (in the staging folder)."""
        return os.path.join(self.stage, name)

    def commit(self):
        """Replace the previous run's files by the staged ones.

        Returns
        -------
        written : list of str
            Final paths of the files written, in name order.
        """
        names = sorted(os.listdir(self.stage))
        for name in set(self.previous) - set(names):
            target = os.path.join(self.path, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
            elif os.path.lexists(target):
                os.remove(target)
        for name in names:
            os.replace(os.path.join(self.stage, name), os.path.join(self.path, name))
        manifest = os.path.join(self.stage, self.manifest)
        with open(manifest, "w") as fh:
            json.dump({"written_by": "sela", "files": names}, fh)
        os.replace(manifest, os.path.join(self.path, self.manifest))
        os.rmdir(self.stage)
        return [os.path.join(self.path, name) for name in names]

    def discard(self):
        """Remove the staging folder and what it holds (a failed run)."""
        shutil.rmtree(self.stage, ignore_errors=True)
