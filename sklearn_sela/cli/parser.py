"""The ``sela`` argument parser.

The options of estimator parameters come from the estimator
(:mod:`sklearn_sela.cli.options`); this module declares only what the shell
adds: paths, outputs, checkpoints, reading the input, threads and messages.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import argparse
import textwrap

from . import commands, fit
from .inputs import IMAGE_EXTENSIONS
from .options import add_estimator_options

EPILOG = """\
examples:
  sela demo                                   # digits, about 1.5 minutes
  sela fit photos/ --n-clusters 50 --image-size 64 --out run1
  sela fit data.npy --n-clusters 10 --n-heads 5 --max-epochs 100 --features
  sela predict run1/model.pt new_photos/ --out run1/new
  sela transform run1/model.pt new_photos/ --out run1/new

Exit status: 0 on success, 1 on a user error (one-line message on stderr),
2 on a usage error, 130 when interrupted.
"""


def _paragraphs(*texts):
    """Wrap each paragraph for the raw description formatter."""
    return "\n\n".join(textwrap.fill(t, width=79) for t in texts)


def _int_at_least(minimum):
    """argparse type: an int >= ``minimum``."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep paragraph breaks; append defaults that say something."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and default is not None
            and default is not False
            and default is not argparse.SUPPRESS
            and action.option_strings
        ):
            text += f" (default: {default})"
        return text


def _estimator():
    from ..clusterer import SelfLabelClusterer

    return SelfLabelClusterer


def _runtime_options(parser, *, reading=True):
    g = parser.add_argument_group("runtime")
    g.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads for torch (default: torch's choice); 1 is "
                        "fastest on a machine busy with other work")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or messages, only errors")
    g.add_argument("--debug", action="store_true",
                   help="show the full traceback on errors")
    if reading:
        r = parser.add_argument_group("reading the input")
        r.add_argument("--key", default=None, metavar="NAME",
                       help="array to use from a .npz file (default: its only "
                            "array, or the one named X)")
        r.add_argument("--check", choices=("full", "header", "none"), default="full",
                       help="how image files are checked up front: 'full' decodes "
                            "each one, 'header' only verifies the file structure; "
                            "unreadable files are skipped and reported")


def _add_demo(sub):
    p = sub.add_parser(
        "demo", formatter_class=_Formatter,
        help="cluster scikit-learn's digits and compare with k-means",
        description=_paragraphs(
            "Cluster scikit-learn's 1,797 handwritten digits with SeLa and with "
            "KMeans, and print ACC (accuracy after matching clusters to digits), "
            "NMI and ARI against the true digits; the SeLa scores are those of "
            "the head chosen after training.",
            "Writes into --out: digits_montage.png (one row of random members "
            "per cluster) and digits_label_nmi.png (NMI between consecutive "
            "self-labellings, and with the true digits, over training). Takes "
            "about two minutes on two idle CPU cores (longer on a "
            "busy machine; --threads 1 helps there); needs no download.",
        ),
    )
    p.add_argument("--out", default=".", metavar="DIR", help="folder for the PNG files")
    p.add_argument("--quick", action="store_true",
                   help="2 epochs only, unless --max-epochs is given (a smoke test; "
                        "the clusters will be poor)")
    add_estimator_options(
        p, _estimator(), defaults={"random_state": 0},
        names=("n_heads", "max_epochs", "device", "num_workers", "random_state"),
    )
    _runtime_options(p, reading=False)
    p.set_defaults(func=commands.cmd_demo)


FIT_DESCRIPTION = (
    "Train SeLa on PATH: a folder of images (searched at any depth for "
    f"{', '.join(IMAGE_EXTENSIONS)}; class sub-folders are allowed "
    "but not needed), a single image, or a .npy/.npz array of shape "
    "(N, D) features or (N, H, W), (N, H, W, C), (N, C, H, W) images. "
    "Unreadable image files are skipped and reported; images of "
    "different sizes need --image-size.",
    "Writes into --out: labels.csv (file path, or row index for "
    "arrays, then the cluster -- what the model predicts for it -- "
    "and one self-label column per head), model.pt "
    "(weights and plain parameters, loaded without running code), "
    "montage.png of the clusters (images only), label_nmi.png, "
    "features.npy (with --features) and summary.json (parameters, times, "
    "cluster sizes, Sinkhorn iterations per label update, skipped files).",
    "The results are written as a set, only once training has finished: "
    "an interrupted or failed run leaves the folder as it was, and a "
    "run replaces the previous run's results whole (listed in "
    ".sela-fit-outputs.json). Files of those names that sela did not write "
    "are not replaced without --overwrite, and sela's own outputs in a "
    "folder inside PATH are not read as input.",
    "The SelfLabelClusterer options are the estimator's parameters; "
    "those not given keep the estimator's defaults.",
)


def _fit_outputs(p):
    o = p.add_argument_group("output")
    o.add_argument("--out", default=".", metavar="DIR", help="output folder (created if missing)")
    o.add_argument("--overwrite", action="store_true",
                   help="replace files of the output names (labels.csv, model.pt, ...) "
                        "in --out that sela did not write; without it the run is refused "
                        "before training")
    o.add_argument("--features", action="store_true",
                   help="also write the backbone features of the training data to features.npy")
    o.add_argument("--montage-rows", type=_positive_int, default=20, metavar="N",
                   help="clusters shown in the montage (the largest when there are more)")
    o.add_argument("--montage-cols", type=_positive_int, default=10, metavar="N",
                   help="images per cluster in the montages")
    o.add_argument("--score-folders", action="store_true",
                   help="with class sub-folders (ImageFolder layout): report "
                        "ACC/NMI/ARI against the folder names in summary.json")
    c = p.add_argument_group("checkpoints")
    c.add_argument("--checkpoint", action="store_true",
                   help="save the training state after every epoch, to resume an "
                        "interrupted run")
    c.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="checkpoint folder (default: OUT/checkpoint)")
    c.add_argument("--resume", action="store_true",
                   help="continue the run saved in the checkpoint folder (give the same options)")


def _add_fit(sub):
    p = sub.add_parser(
        "fit", formatter_class=_Formatter,
        help="train on an image folder or a .npy/.npz array",
        description=_paragraphs(*FIT_DESCRIPTION),
    )
    p.add_argument("path", metavar="PATH", help="image folder, image file, or .npy/.npz file")
    add_estimator_options(p, _estimator())
    _fit_outputs(p)
    _runtime_options(p)
    p.set_defaults(func=fit.cmd_fit)


def _add_inference(sub, name, func, text, extra):
    p = sub.add_parser(
        name, formatter_class=_Formatter, help=text,
        description=_paragraphs(
            f"{text[0].upper() + text[1:]}. MODEL is a model.pt written by "
            "'sela fit'; PATH is an image folder, an image file, or a "
            ".npy/.npz array shaped like the training data (folder images "
            "are resized to the training size).",
            extra,
        ),
    )
    p.add_argument("model", metavar="MODEL", help="model file written by 'sela fit'")
    p.add_argument("path", metavar="PATH", help="image folder, image file, or .npy/.npz file")
    p.add_argument("--out", default=".", metavar="DIR", help="output folder (created if missing)")
    if name == "predict":
        p.add_argument("--proba", action="store_true",
                       help="also write the cluster probabilities, overall and per head")
    add_estimator_options(
        p, _estimator(), names=("batch_size", "device", "num_workers"),
        defaults={"device": "auto", "num_workers": 0}, unset="the model's",
    )
    _runtime_options(p)
    p.set_defaults(func=func)


def build_parser():
    """Build the ``sela`` argument parser.

    Returns
    -------
    parser : argparse.ArgumentParser
        Parses the command line into a namespace whose ``func`` runs the
        chosen sub-command.
    """
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="sela",
        description=_paragraphs(
            "Self-labelling clustering and representation learning (SeLa, "
            "Asano, Rupprecht & Vedaldi, ICLR 2020): trains a network with "
            "cross-entropy on cluster labels that it assigns itself, under an "
            "equal-size constraint solved by Sinkhorn-Knopp.",
            "Run 'sela COMMAND --help' for the options of a command.",
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(sub)
    _add_fit(sub)
    _add_inference(
        sub, "predict", commands.cmd_predict, "cluster new data with a saved model",
        "Writes predictions.csv (file path or row index, the cluster, then "
        "one label column per head) into --out; with --proba also "
        "probabilities.npy (the clusters') and probabilities_headT.npy.")
    _add_inference(
        sub, "transform", commands.cmd_transform,
        "extract backbone features of new data with a saved model",
        "Writes features.npy (one row per sample, float32) and, for images, "
        "features_index.csv (row -> file path) into --out.")
    return parser
