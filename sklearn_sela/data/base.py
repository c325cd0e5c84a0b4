"""What an estimator was fitted on, and the checks shared by the input adapters.

:class:`InputInfo` describes the input seen during ``fit``;
:func:`check_expected` compares new input with it, with scikit-learn's
error messages, and :func:`resize_images` is the one image resizing of the
array (:mod:`sklearn_sela.data.inputs`) and dataset
(:mod:`sklearn_sela.data.streaming`) input paths.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

from dataclasses import dataclass

import torch.nn.functional as F

__all__ = ["InputInfo"]

#: Channel counts an image may have: grayscale, RGB, RGB with alpha.
CHANNEL_COUNTS = (1, 3, 4)
_KINDS = ("tabular", "image")


@dataclass(frozen=True)
class InputInfo:
    """Description of the input an estimator was fitted on.

    Parameters
    ----------
    kind : {"tabular", "image"}
        Whether samples are feature vectors or images.
    sample_shape : tuple of int
        ``(n_features,)`` for tabular data, ``(channels, height, width)`` for
        images; this is the shape of one item of the dataset returned by
        :func:`as_dataset`.
    n_samples : int
        Number of samples.
    """

    kind: str
    sample_shape: tuple
    n_samples: int

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}.")
        shape = tuple(int(s) for s in self.sample_shape)
        if len(shape) != (1 if self.kind == "tabular" else 3):
            raise ValueError(
                f"sample_shape {shape} does not fit kind={self.kind!r}: expected "
                "(n_features,) for tabular data and (channels, height, width) "
                "for images."
            )
        # Frozen dataclass: normalise lists / numpy ints so that equality and
        # hashing behave.
        object.__setattr__(self, "sample_shape", shape)
        object.__setattr__(self, "n_samples", int(self.n_samples))


def _expected_mismatch(info, expected, name):
    """Return a scikit-learn style message if ``info`` does not fit ``expected``."""
    if expected is None:
        return None
    if info.kind == "tabular":
        if expected.kind == "tabular":
            if info.sample_shape != expected.sample_shape:
                return (
                    f"X has {info.sample_shape[0]} features, but {name} is "
                    f"expecting {expected.sample_shape[0]} features as input."
                )
            return None
        return (
            f"X has {info.sample_shape[0]} features, but {name} is expecting "
            f"images of shape {expected.sample_shape} (channels, height, width) "
            "as input."
        )
    if expected.kind == "tabular":
        return (
            f"X contains images of shape {info.sample_shape} (channels, height, "
            f"width), but {name} is expecting {expected.sample_shape[0]} "
            "features as input."
        )
    c, h, w = info.sample_shape
    ec, eh, ew = expected.sample_shape
    if c != ec:
        return f"X has {c} channels, but {name} is expecting {ec} channels as input."
    if (h, w) != (eh, ew):
        return (
            f"X has images of size {h}x{w} (height x width), but {name} is "
            f"expecting images of size {eh}x{ew} as input. Resize them to "
            f"{eh}x{ew} first."
        )
    return None


def check_expected(info, expected, estimator_name=None):
    """Check that new input matches the input an estimator was fitted on.

    The messages follow scikit-learn's (``"X has 5 features, but KMeans is
    expecting 64 features as input."``), for images too.

    Parameters
    ----------
    info : InputInfo
        Description of the new input.
    expected : InputInfo or None
        Description of the input seen during ``fit``; None accepts anything.
    estimator_name : str, default=None
        Name of the estimator, used in the messages; None reads "the
        estimator".

    Raises
    ------
    ValueError
        If ``info`` does not match ``expected`` (kind, number of features,
        channels or image size).
    TypeError
        If ``expected`` is neither an :class:`InputInfo` nor None.
    """
    if expected is not None and not isinstance(expected, InputInfo):
        raise TypeError(f"expected must be an InputInfo or None, got {type(expected).__name__}.")
    name = "the estimator" if estimator_name is None else estimator_name
    msg = _expected_mismatch(info, expected, name)
    if msg is not None:
        raise ValueError(msg)


def resize_images(batch, hw):
    """Resize a batch of images bilinearly, antialiased when downscaling.

    Parameters
    ----------
    batch : torch.Tensor of shape (B, C, H, W)
        Float images.
    hw : (int, int)
        Output ``(height, width)``.

    Returns
    -------
    resized : torch.Tensor of shape (B, C, *hw)
        ``batch`` itself if it already has that size, else a new tensor.
    """
    if tuple(batch.shape[-2:]) == tuple(hw):
        return batch
    # antialias only acts when downscaling; it avoids the aliasing that plain
    # bilinear sampling produces on large reductions.
    return F.interpolate(batch, size=hw, mode="bilinear", align_corners=False, antialias=True)
