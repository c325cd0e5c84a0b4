"""The ``sela`` command: self-labelling clustering from the shell.

Sub-commands:

``sela demo``
    Cluster scikit-learn's handwritten digits, compare with k-means, and write
    a montage of the clusters and a plot of label stability.
``sela fit PATH``
    Train on an image folder (any nesting) or a ``.npy``/``.npz`` array and
    write the clusters and self-labels, the model, a montage of the clusters
    and a summary.
``sela predict MODEL PATH`` / ``sela transform MODEL PATH``
    Cluster new data, or extract its features, with a saved model.

Run ``sela --help`` or ``sela COMMAND --help`` for the options. The options
for :class:`~sklearn_sela.SelfLabelClusterer`'s parameters (``--n-clusters``,
``--max-epochs``, ...) are derived from the estimator itself -- its
signature, parameter constraints and docstring -- so they follow it without
an edit here; the command adds only what the shell needs (paths, outputs,
checkpoints, progress). Usage errors, a bad option value included, exit with
status 2 (argparse); user errors (missing files, unreadable inputs,
impossible settings) print one line and exit with status 1; ``--debug``
shows the full traceback instead.

The image-folder reader the command uses lives in :mod:`sklearn_sela.data`
(:class:`~sklearn_sela.data.ImageFiles`, a lazily loading dataset of
image files usable with :class:`~sklearn_sela.SelfLabelClusterer` from Python
too, and the functions that find and check the files); its public names are
importable from this module as well.

The package's modules: ``parser`` (the argument parser), ``options`` (options
derived from the estimator), ``fit`` and ``commands`` (the sub-commands),
``inputs`` (reading PATH) and ``runtime`` (messages, progress, outputs).
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import os
import sys
import traceback

from .inputs import IMAGE_EXTENSIONS, ImageFiles, check_image_files, find_image_files
from .options import given_params, option_of
from .parser import build_parser
from .runtime import UserError, setup_torch

__all__ = [
    "main",
    "build_parser",
    "find_image_files",
    "check_image_files",
    "ImageFiles",
    "IMAGE_EXTENSIONS",
]


def main(argv=None):
    """Run the ``sela`` command.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    status : int
        0 on success, 1 on a user error, 2 on a usage error, 130 when
        interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.argv = argv
    try:
        setup_torch(args, given_params(args))
        return args.func(args)
    except KeyboardInterrupt:
        return _interrupted(args)
    except Exception as exc:
        return _failed(args, exc)


def _interrupted(args):
    hint = "; no results were written" if args.command == "fit" else ""
    ckpt = getattr(args, "checkpoint_path", None)
    if ckpt is not None and os.path.exists(os.path.join(ckpt, "checkpoint.pt")):
        hint += (f"; the checkpoint in {ckpt} holds the last complete epoch: run "
                 "the same command with --resume to continue")
    print(f"sela: interrupted{hint}", file=sys.stderr)
    return 130


def _failed(args, exc):
    if args.debug:
        traceback.print_exc()
    message = _user_message(exc, args)
    if message is None:
        if not args.debug:
            traceback.print_exc()
        print("sela: internal error (please report it with the traceback above)",
              file=sys.stderr)
        return 1
    print(f"sela: error: {message}", file=sys.stderr)
    return 1


def _user_message(exc, args):
    """One-line message for errors caused by input or settings, else None."""
    import torch

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory on the device; try a smaller --batch-size or --image-size."
    if not isinstance(exc, (ValueError, OSError, FloatingPointError)):
        return None
    text = " ".join(str(exc).split()) or type(exc).__name__
    # The estimator's errors about a parameter name it: name its option too.
    option = option_of(text, getattr(args, "estimator_params", ()))
    return f"{option}: {text}" if option and isinstance(exc, ValueError) else text
