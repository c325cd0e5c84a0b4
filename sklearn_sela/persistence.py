"""Save and load fitted :class:`~sklearn_sela.SelfLabelClusterer` models.

The model file is a :func:`torch.save` archive of plain values only -- JSON
strings, numbers, lists and tensors -- so :func:`load_model` reads it with
``torch.load(..., weights_only=True)``: loading a model file never runs code
from it, unlike a pickle (``joblib.dump``) of the estimator, which can run
arbitrary code when loaded. The network is rebuilt from the saved
parameters by the estimator's own construction code and the weights are
copied into it.

Layout of the archive::

    {
      "format": "sklearn-sela-model",
      "format_version": 1,
      "library_version": "0.1.0",
      "estimator": "SelfLabelClusterer",
      "params": "<JSON of the estimator's get_params()>",
      "state_dict": {... torch module weights ...},
      "fitted": {
        "input_info": {"kind": "image", "sample_shape": [1, 8, 8], "n_samples": 1797},
        "n_clusters_": [10, ...], "head_": 3, "n_epochs_": 200,
        "labels_": LongTensor (n_samples,),
        "labels_all_": LongTensor (n_samples, n_heads),
        "log_betas_": [Tensor or None per head],
        "cluster_proportions_": [Tensor per head],
        "proportions": [Tensor or None per head],
        "history": "<JSON of the skorch history>",
        "max_epochs": 200, "seed": 1234, "label_updates": 100
      }
    }

A file whose parameters are not exactly the estimator's (a name missing or
unknown, e.g. written by another version) is refused with a
:class:`ModelFileError` naming them.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import json
import os
import warnings

import numpy as np
import torch

__all__ = ["save_model", "load_model", "model_params", "ModelFileError"]

MODEL_FORMAT = "sklearn-sela-model"
MODEL_FORMAT_VERSION = 1

# Parameters that cannot be stored as JSON and have no meaning for a loaded
# model (they only affect training), with the value a loaded model gets.
_TRAINING_ONLY = {"callbacks": None, "checkpoint_dir": None}


class ModelFileError(ValueError):
    """A model file is missing, unreadable or not a sklearn-sela model."""


def _jsonable(value):
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    raise TypeError(type(value).__name__)


def model_params(est):
    """The parameters of a fitted estimator as a model file stores them.

    ``get_params(deep=False)`` as plain JSON values: ``random_state`` is the
    seed the fit used, training-only parameters that cannot be stored
    (``callbacks``, ``checkpoint_dir``) are None, and a custom augmentation
    callable is ``"auto"`` (with a warning; inference does not use it).

    Parameters
    ----------
    est : SelfLabelClusterer
        A fitted estimator.

    Returns
    -------
    params : dict

    Raises
    ------
    ValueError
        If a parameter (e.g. a custom backbone module) cannot be stored as a
        plain value.
    """
    params = {}
    for name, value in est.get_params(deep=False).items():
        if name in _TRAINING_ONLY:
            params[name] = _TRAINING_ONLY[name]
            continue
        if name == "random_state":
            value = int(est.net_.label_seed)
        if name == "augment" and callable(value):
            warnings.warn(
                "The custom augmentation callable is not saved in the model "
                "file (only weights and plain parameters are); the loaded "
                "model has augment='auto'. Inference does not use it.",
                UserWarning,
                stacklevel=3,
            )
            value = "auto"
        try:
            params[name] = _jsonable(value)
        except TypeError:
            raise ValueError(
                f"Cannot save parameter {name}={value!r} of type "
                f"{type(value).__name__} in a model file: only plain values "
                "(str, numbers, lists) are stored. Use a named backbone such "
                "as 'convnet', or save the torch module yourself with "
                "torch.save(est.net_.module_.state_dict(), path)."
            ) from None
    return params


def save_model(est, path):
    """Write a fitted :class:`~sklearn_sela.SelfLabelClusterer` to ``path``.

    Parameters
    ----------
    est : SelfLabelClusterer
        A fitted estimator whose ``backbone`` is given by name (a custom
        :class:`torch.nn.Module` cannot be rebuilt from plain values).
    path : str or path-like
        Output file (conventionally ``*.pt``); its directory must exist. The
        file is written to a temporary name first and renamed, so an
        interrupted save leaves any earlier file intact.

    Returns
    -------
    path : str
        The path written.

    Raises
    ------
    ValueError
        If a parameter cannot be stored as a plain value.
    sklearn.exceptions.NotFittedError
        If ``est`` is not fitted.

    See Also
    --------
    load_model : Read the file back.

    Examples
    --------
    >>> import tempfile, os
    >>> from sklearn.datasets import load_digits
    >>> from sklearn_sela import SelfLabelClusterer
    >>> from sklearn_sela.persistence import save_model, load_model
    >>> X, _ = load_digits(return_X_y=True)
    >>> est = SelfLabelClusterer(10, max_epochs=1, random_state=0).fit(X[:200])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
    >>> _ = save_model(est, path)
    >>> bool((load_model(path).predict(X[:200]) == est.predict(X[:200])).all())
    True
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est, "net_")
    net = est.__getstate__()["net_"]
    info = est.input_info_
    state = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "library_version": _library_version(),
        "estimator": type(est).__name__,
        "params": json.dumps(model_params(est)),
        "state_dict": net["state_dict"],
        "fitted": {
            "input_info": {
                "kind": info.kind,
                "sample_shape": list(info.sample_shape),
                "n_samples": int(info.n_samples),
            },
            "n_clusters_": [int(k) for k in est.n_clusters_],
            "head_": int(est.head_),
            "n_epochs_": int(est.n_epochs_),
            "labels_": torch.as_tensor(np.asarray(est.labels_), dtype=torch.int64),
            "labels_all_": torch.as_tensor(np.asarray(est.labels_all_), dtype=torch.int64),
            "log_betas_": [
                None if b is None else torch.as_tensor(np.asarray(b)) for b in est.log_betas_
            ],
            "cluster_proportions_": [
                torch.as_tensor(np.asarray(p)) for p in est.cluster_proportions_
            ],
            "proportions": net["proportions"],
            "history": json.dumps(net["history"], default=_json_default),
            "max_epochs": net["max_epochs"],
            "seed": net["seed"],
            "label_updates": net["label_updates"],
        },
    }
    path = os.fspath(path)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return float(value)


def _library_version():
    from . import __version__

    return __version__


def _read(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"Model file {path!r} does not exist.")
    if os.path.isdir(path):
        raise ModelFileError(f"Model file {path!r} is a directory, not a file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-archives
        # torch's messages run to paragraphs (advice about weights_only that
        # does not apply here): keep the first sentence.
        reason = " ".join(str(exc).split()).split(". ")[0][:200] or type(exc).__name__
        raise ModelFileError(
            f"{path!r} is not a readable sklearn-sela model file ({reason})."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{path!r} is not a sklearn-sela model file (written by "
            "sklearn_sela.persistence.save_model or 'sela fit')."
        )
    version = state.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path!r} has model format {version!r}, written by sklearn-sela "
            f"{state.get('library_version', '?')}; this is sklearn-sela "
            f"{_library_version()}, which reads format {MODEL_FORMAT_VERSION}. "
            "Load it with the version that wrote it, or fit the model again."
        )
    return state


def load_model(path, *, device=None, batch_size=None, num_workers=None, verbose=None):
    """Rebuild a fitted :class:`~sklearn_sela.SelfLabelClusterer` from a file.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save_model` (or ``sela fit``).
    device : str, default=None
        Torch device for inference, e.g. ``"cpu"`` for a model trained on a
        GPU; the saved ``device`` parameter when None.
    batch_size : int, default=None
        Batch size for inference; the saved one when None.
    num_workers : int, default=None
        DataLoader workers for inference; the saved number when None.
    verbose : int, default=None
        Verbosity of the loaded estimator; the saved one when None.

    Returns
    -------
    est : SelfLabelClusterer
        Fitted: every fitted attribute is restored, so :meth:`predict`,
        :meth:`predict_proba`, :meth:`transform` and :meth:`score` give the
        same results as on the saved estimator.

    Raises
    ------
    ModelFileError
        If the file is missing, unreadable, not a sklearn-sela model, or
        holds parameters other than this version's.

    Notes
    -----
    Reading uses ``torch.load(..., weights_only=True)``, so only tensors and
    plain values are unpickled. Training-only parameters that cannot be
    stored (``callbacks``, ``checkpoint_dir``) are None on the loaded model.
    """
    from .clusterer import SelfLabelClusterer
    from .data import InputInfo

    state = _read(path)
    where = os.fspath(path)
    try:
        params = json.loads(state["params"])
        known = set(SelfLabelClusterer().get_params(deep=False))
        unknown, missing = sorted(set(params) - known), sorted(known - set(params))
        if unknown or missing:
            raise ModelFileError(
                f"{where!r} does not fit this sklearn-sela "
                f"({_library_version()}; the file is from "
                f"{state.get('library_version', '?')}): "
                + "; ".join(
                    f"{what} parameter(s) {', '.join(names)}"
                    for what, names in (("unknown", unknown), ("missing", missing)) if names
                )
                + ". Load it with the version that wrote it, or fit the model again."
            )
        for name, value in (
            ("device", device),
            ("batch_size", batch_size),
            ("num_workers", num_workers),
            ("verbose", verbose),
        ):
            if value is not None:
                params[name] = value
        est = SelfLabelClusterer(**params)
        fitted = state["fitted"]
        info = InputInfo(
            fitted["input_info"]["kind"],
            tuple(fitted["input_info"]["sample_shape"]),
            fitted["input_info"]["n_samples"],
        )
        labels_all = fitted["labels_all_"].to(torch.int64)
        log_betas = list(fitted["log_betas_"])
        restored = {
            "input_info_": info,
            "n_clusters_": [int(k) for k in fitted["n_clusters_"]],
            "head_": int(fitted["head_"]),
            "n_epochs_": int(fitted["n_epochs_"]),
            "labels_all_": labels_all.numpy().copy(),
            "labels_": fitted["labels_"].numpy().astype(np.int64),
            "log_betas_": [None if b is None else b.numpy() for b in log_betas],
            "cluster_proportions_": [p.numpy() for p in fitted["cluster_proportions_"]],
            "net_": {
                "state_dict": state["state_dict"],
                "labels": labels_all,
                "log_betas": log_betas,
                "proportions": list(fitted["proportions"]),
                "history": json.loads(fitted["history"]),
                "max_epochs": int(fitted["max_epochs"]),
                "seed": int(fitted["seed"]),
                "label_updates": int(fitted["label_updates"]),
            },
        }
        if info.kind == "tabular":
            restored["n_features_in_"] = info.sample_shape[0]
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(
            f"{where!r} is a damaged sklearn-sela model file ({exc})."
        ) from exc
    try:
        est.__setstate__({**est.__dict__, **restored})
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        detail = detail.split(":", 1)[-1].strip()[:300]
        raise ModelFileError(
            f"The weights in {where!r} do not fit the network its "
            f"parameters describe ({detail})."
        ) from exc
    return est
