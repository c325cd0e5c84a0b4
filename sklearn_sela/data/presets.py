"""The default SeLa augmentation for each kind of input.

:func:`default_augmentation` picks the preset (paper, section 3.4 and
appendix A.1) from the :class:`~sklearn_sela.data.InputInfo` of the input,
built either from the batched transforms of :mod:`sklearn_sela.data.augment`
or from the stock torchvision ones.
"""

# Authors: sklearn-sela developers
# License: BSD 3 clause

from torchvision.transforms import v2

from .augment import BatchCompose, RandomColor, RandomGeometric
from .base import InputInfo

__all__ = ["default_augmentation"]


def default_augmentation(info, *, backend="fast"):
    """Return the default SeLa augmentation for the given input.

    The presets follow the paper (section 3.4 and appendix A.1): random
    resized crops, horizontal flips, colour jitter and random grayscale for
    colour images, and milder geometric jitter for small grayscale images.

    ============================  ===============================================
    input                         preset
    ============================  ===============================================
    tabular                       ``None`` (no augmentation)
    3 channels, min(H, W) >= 32   crop scale (0.2, 1), flip, ColorJitter(0.4, 0.4,
                                  0.4, 0.1) with p=0.8, grayscale p=0.2
    3 channels, smaller           same with crop scale (0.5, 1)
    4 channels                    as 3 channels; the alpha channel is only
                                  cropped and flipped
    1 channel, min(H, W) < 16     affine: rotation +-15 degrees, shift +-15%,
                                  zoom (0.8, 1.2); e.g. 8x8 digits
    1 channel, 16 to 31 pixels    crop scale (0.3, 1), ratio (0.8, 1.25), brightness
                                  and contrast 0.8 always, no flip (e.g.
                                  Fashion-MNIST; flips would confuse digits)
    1 channel, min(H, W) >= 32    crop scale (0.2, 1), flip, brightness and
                                  contrast 0.4 with p=0.8
    ============================  ===============================================

    Parameters
    ----------
    info : InputInfo
        Description of the input (from :func:`as_dataset`).
    backend : {"fast", "torchvision"}, default="fast"
        ``"fast"`` returns :class:`BatchCompose` of :class:`RandomGeometric`
        and :class:`RandomColor`, which work on single images and, much
        faster, on whole batches (also on GPU). ``"torchvision"`` returns the
        equivalent :class:`torchvision.transforms.v2.Compose` of the stock
        transforms, applied per sample.

    Returns
    -------
    transform : callable or None
        A picklable callable mapping a float ``(C, H, W)`` tensor to a
        tensor of the same shape, or ``None`` for tabular data.
    """
    if not isinstance(info, InputInfo):
        raise TypeError(f"info must be an InputInfo, got {type(info).__name__}.")
    if backend not in ("fast", "torchvision"):
        raise ValueError(f"backend must be 'fast' or 'torchvision', got {backend!r}.")
    if info.kind == "tabular":
        return None
    c, h, w = info.sample_shape
    small = min(h, w)
    geo = {}
    color = None
    if c == 1 and small < 16:
        # Tiny images need strong geometric jitter to make views differ.
        geo = dict(degrees=15.0, translate=0.15, scale=(0.8, 1.2))
    elif c == 1 and small < 32:
        # Without brightness/contrast jitter, overall brightness is an easy
        # cue for the self-labels.
        geo = dict(crop_scale=(0.3, 1.0), crop_ratio=(0.8, 1.25))
        color = dict(brightness=0.8, contrast=0.8, saturation=0.0, hue=0.0, p=1.0, grayscale_p=0.0)
    elif c == 1:
        geo = dict(crop_scale=(0.2, 1.0), hflip=0.5)
        color = dict(brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0, p=0.8, grayscale_p=0.0)
    else:
        geo = dict(crop_scale=(0.2, 1.0) if small >= 32 else (0.5, 1.0), hflip=0.5)
        color = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8, grayscale_p=0.2)

    if backend == "fast":
        steps = [RandomGeometric(**geo)]
        if color is not None:
            steps.append(RandomColor(**color))
        return BatchCompose(steps)

    steps = []
    if "degrees" in geo:
        steps.append(v2.RandomAffine(
            degrees=geo["degrees"], translate=(geo["translate"],) * 2, scale=geo["scale"],
            interpolation=v2.InterpolationMode.BILINEAR,
        ))
    else:
        steps.append(v2.RandomResizedCrop((h, w), scale=geo["crop_scale"],
                                          ratio=geo.get("crop_ratio", (3 / 4, 4 / 3)),
                                          antialias=True))
    if geo.get("hflip"):
        steps.append(v2.RandomHorizontalFlip(geo["hflip"]))
    if color is not None and c in (1, 3):
        jitter = v2.ColorJitter(color["brightness"], color["contrast"],
                                color["saturation"] or None, color["hue"] or None)
        steps.append(v2.RandomApply([jitter], p=color["p"]))
        if color["grayscale_p"]:
            steps.append(v2.RandomGrayscale(p=color["grayscale_p"]))
    return v2.Compose(steps)
