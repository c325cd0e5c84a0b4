"""Save and load fitted :class:`~sklearn_sela.SelfLabelClusterer` models.

The model file is a :func:`torch.save` archive of plain values only -- JSON
strings, numbers, lists and tensors -- so :func:`load_model` reads it with
``torch.load(..., weights_only=True)``: loading a model file never runs code
from it, unlike a pickle (``joblib.dump``) of the estimator, which can run
arbitrary code when loaded. The network is rebuilt from the saved
parameters by the estimator's own construction code and the weights are
copied into it.

Layout of the archive (``"format_version": 10``)::

    {
      "format": "sklearn-sela-model",
      "format_version": 10,
      "library_version": "0.1.0",
      "params": "<JSON of the estimator's get_params()>",
      "state_dict": {... torch module weights ...},
      "input_info": {"kind": "image", "sample_shape": [1, 8, 8], "n_samples": 1797},
      "n_clusters": [10],
      "max_epochs": 200, "seed": 1234, "n_epochs": 200,
      "labels": LongTensor (n_samples, n_heads),   # self-labels of the training set
      "log_betas": [Tensor or None per head],
      "label_updates": 100,
      "history": "<JSON of the skorch history>",
      "labels_from": "features",                  # or "head", "spectral"
      "whitening": {"mean": Tensor (D,), "matrix": Tensor (D, D)},
      "partition": {                               # None with "head"
        "params": "<JSON of the SinkhornAssigner's get_params()>",
        "cluster_centers": Tensor (K, D), "log_beta": Tensor (K,),
        "labels": LongTensor (n_samples,),        # the assigner's labels_
        "partition_labels": LongTensor (n_samples,),  # the estimator's labels_
        "inertia": float, "temperature": float, "n_iter": int,
        "n_features_in": int
      }
    }

With ``"labels_from": "spectral"`` the partition is the vote for new
samples instead::

      "partition": {
        "params": "<JSON of the KNeighborsClassifier's get_params()>",
        "features": Tensor (n_samples, D),         # the training features
        "labels": LongTensor (n_samples,)
      }

Formats 1 to 9 are still read. They predate ``partition_spectral``: their
feature partitions were not refined in the spectral embedding, their
``labels_`` are the assigner's ``labels``, and their models get
``partition_spectral=False`` (format 10 adds that parameter and
``partition_labels``). Formats 1 to 8 also predate ``partition_views``: their
feature partitions come from the features without augmentation, and their
models get ``partition_views=0`` (format 9 differs from 8 in that parameter
only, so that an older sklearn-sela refuses a file whose parameters it does
not know). Formats 1 to 7 also predate ``partition_smoothing``: their
feature partitions come from the features themselves, and their models get
``partition_smoothing=0`` (format 8 differs from 7 in that parameter
only). Formats 1 to 6 also predate ``partition_n_init``: their
feature partitions come from a single k-means run, and their models get
``partition_n_init=1`` (format 7 differs from 6 in that parameter only). Formats 1
to 5 also predate ``label_neighbors``: their
models were trained with the paper's self-labelling step and get
``label_neighbors=1`` (format 6 differs from 5 in that parameter only, so
that an older sklearn-sela refuses a file whose parameters it does not
know). Formats 1 to 4 predate the whitening statistics, so
their models get ``whiten=False`` and ``transform`` returns the features
as it did; formats 1 to 3 also predate ``labels_from="spectral"``. The
networks of formats 1 and 2 predate ``projection`` and
``temperature`` (linear heads on the backbone features, ``lam`` 25), which
their models get; format 1 also predates ``labels_from``, so its models
take their labels from the head, as they did.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

import json
import os
import warnings

import numpy as np
import torch

__all__ = ["save_model", "load_model", "ModelFileError"]

MODEL_FORMAT = "sklearn-sela-model"
MODEL_FORMAT_VERSION = 10

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
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        # e.g. the initial centres of a refined feature partition
        return value.tolist()
    raise TypeError(type(value).__name__)


def _params_json(estimator):
    return json.dumps({k: _jsonable(v) for k, v in estimator.get_params().items()})


def _partition_state(est):
    if est.labels_from_ == "spectral":
        vote = est.feature_classifier_
        return {
            "params": _params_json(vote),
            # The vote's own copy of the training features (no other is kept).
            "features": torch.as_tensor(vote._fit_X),
            "labels": torch.as_tensor(est.labels_, dtype=torch.int64),
        }
    if est.labels_from_ != "features":
        return None
    sa = est.feature_assigner_
    return {
        "params": _params_json(sa),
        "cluster_centers": torch.as_tensor(sa.cluster_centers_),
        "log_beta": torch.as_tensor(sa.log_beta_),
        "labels": torch.as_tensor(sa.labels_, dtype=torch.int64),
        # labels_ itself: the partition refined in the spectral embedding
        # (partition_spectral), which the assigner's own assignment of the
        # training samples need not reproduce.
        "partition_labels": torch.as_tensor(est.labels_, dtype=torch.int64),
        "inertia": float(sa.inertia_),
        "temperature": float(sa.temperature_),
        "n_iter": int(sa.n_iter_),
        "n_features_in": int(sa.n_features_in_),
    }


def _vote_from_state(part):
    from sklearn.neighbors import KNeighborsClassifier

    vote = KNeighborsClassifier(**json.loads(part["params"]))
    return vote.fit(part["features"].numpy(), part["labels"].numpy())


def _partition_from_state(part):
    from .assigner import SinkhornAssigner

    sa = SinkhornAssigner(**json.loads(part["params"]))
    sa.cluster_centers_ = part["cluster_centers"].numpy()
    sa.log_beta_ = part["log_beta"].numpy()
    sa.labels_ = part["labels"].numpy()
    sa.inertia_ = float(part["inertia"])
    sa.temperature_ = float(part["temperature"])
    sa.n_iter_ = int(part["n_iter"])
    sa.n_features_in_ = int(part["n_features_in"])
    return sa


def _params_to_json(est):
    params = {}
    for name, value in est.get_params(deep=False).items():
        if name in _TRAINING_ONLY:
            params[name] = _TRAINING_ONLY[name]
            continue
        if name == "random_state":
            # The seed actually used is saved separately; an int keeps the
            # loaded estimator's get_params() honest and JSON-able.
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
    return json.dumps(params)


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
    net = est.net_
    info = est.input_info_
    state = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "library_version": _library_version(),
        "estimator": type(est).__name__,
        "params": _params_to_json(est),
        "state_dict": {k: v.detach().cpu() for k, v in net.module_.state_dict().items()},
        "input_info": {
            "kind": info.kind,
            "sample_shape": list(info.sample_shape),
            "n_samples": int(info.n_samples),
        },
        "n_clusters": [int(k) for k in est.n_clusters_],
        "max_epochs": int(net.max_epochs),
        "seed": int(net.label_seed),
        "n_epochs": int(est.n_epochs_),
        "labels": torch.as_tensor(np.asarray(est.labels_all_), dtype=torch.int64),
        "log_betas": [
            None if b is None else torch.as_tensor(np.asarray(b)) for b in est.log_betas_
        ],
        "label_updates": int(getattr(net, "label_updates_", 0)),
        "history": json.dumps(net.history.to_list(), default=_json_default),
        "labels_from": est.labels_from_,
        "partition": _partition_state(est),
        "whitening": {
            "mean": torch.as_tensor(est.whitening_mean_),
            "matrix": torch.as_tensor(est.whitening_matrix_),
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
    if int(state.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path!r} was written by a newer sklearn-sela (model format "
            f"{state['format_version']}); this version reads format "
            f"{MODEL_FORMAT_VERSION}. Upgrade sklearn-sela."
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
        Fitted: ``labels_``, ``labels_all_``, ``labels_from_``,
        ``feature_assigner_`` or ``feature_classifier_`` (when fitted), ``n_clusters_``, ``net_``,
        ``history_``, ``log_betas_``, ``input_info_``, ``n_epochs_`` and
        the whitening statistics (format 5) are restored, so :meth:`predict`, :meth:`predict_proba`,
        :meth:`transform` and :meth:`score` give the same results as on the
        saved estimator.

    Raises
    ------
    ModelFileError
        If the file is missing, unreadable, or not a sklearn-sela model.

    Notes
    -----
    Reading uses ``torch.load(..., weights_only=True)``, so only tensors and
    plain values are unpickled. Training-only parameters that cannot be
    stored (``callbacks``, ``checkpoint_dir``) are None on the loaded model.
    """
    from skorch.history import History

    from .clusterer import SelfLabelClusterer
    from .data import InputInfo

    state = _read(path)
    try:
        params = json.loads(state["params"])
        # Format 1 predates labels_from: those models used their head.
        labels_from = state.get("labels_from", "head")
        params.setdefault("labels_from", labels_from)
        # Formats 1 and 2 predate the projection and cosine heads.
        params.setdefault("projection", None)
        params.setdefault("temperature", None)
        # Formats 1 to 4 predate the whitening: their features stay raw.
        whitening = state.get("whitening")
        params.setdefault("whiten", False)
        # Formats 1 to 5 predate the neighbour-averaged self-labelling.
        params.setdefault("label_neighbors", 1)
        # Formats 1 to 6 predate the choice among several partitions.
        params.setdefault("partition_n_init", 1)
        # Formats 1 to 7 predate the neighbour-averaged partition.
        params.setdefault("partition_smoothing", 0)
        # Formats 1 to 8 predate the partition of view-averaged features.
        params.setdefault("partition_views", 0)
        # Formats 1 to 9 predate the refinement in the spectral embedding.
        params.setdefault("partition_spectral", False)
        partition = None
        if labels_from == "features":
            partition = _partition_from_state(state["partition"])
        elif labels_from == "spectral":
            partition = _vote_from_state(state["partition"])
        for name, value in (
            ("device", device),
            ("batch_size", batch_size),
            ("num_workers", num_workers),
            ("verbose", verbose),
        ):
            if value is not None:
                params[name] = value
        est = SelfLabelClusterer(**params)
        info = InputInfo(
            state["input_info"]["kind"],
            tuple(state["input_info"]["sample_shape"]),
            state["input_info"]["n_samples"],
        )
        ks = [int(k) for k in state["n_clusters"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(
            f"{os.fspath(path)!r} is a damaged sklearn-sela model file ({exc})."
        ) from exc
    est.input_info_ = info
    if info.kind == "tabular":
        est.n_features_in_ = info.sample_shape[0]
    net = est._build_net(info, ks, int(state["max_epochs"]), info.n_samples, int(state["seed"]))
    net.initialize()
    try:
        net.module_.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        detail = detail.split(":", 1)[-1].strip()[:300]
        raise ModelFileError(
            f"The weights in {os.fspath(path)!r} do not fit the network its "
            f"parameters describe: it was written by sklearn-sela "
            f"{state.get('library_version', '?')}, this is {_library_version()}, "
            f"and the network may have changed in between ({detail})."
        ) from exc
    net.module_.eval()
    labels = state["labels"].to(torch.int64)
    net.labels_ = labels.clone()
    net.log_betas_ = list(state["log_betas"])
    net.label_updates_ = int(state["label_updates"])
    net.history_ = History(json.loads(state["history"]))
    est.net_ = net
    est.n_clusters_ = ks
    est.n_epochs_ = int(state["n_epochs"])
    est.labels_all_ = labels.numpy().copy()
    est.labels_from_ = labels_from
    if labels_from == "features":
        est.feature_assigner_ = partition
        # Formats 1 to 9 have no refinement: labels_ is the assigner's.
        part = state["partition"]
        est.labels_ = part.get("partition_labels", part["labels"]).numpy().copy()
    elif labels_from == "spectral":
        est.feature_classifier_ = partition
        est.labels_ = state["partition"]["labels"].numpy().copy()
    else:
        est.labels_ = est.labels_all_[:, est.head].copy()
    est.log_betas_ = [None if b is None else b.numpy() for b in state["log_betas"]]
    if whitening is not None:
        est.whitening_mean_ = whitening["mean"].numpy()
        est.whitening_matrix_ = whitening["matrix"].numpy()
    return est
