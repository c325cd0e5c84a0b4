"""sklearn-sela: SeLa self-labelling (Asano, Rupprecht, Vedaldi, ICLR 2020)
for scikit-learn.

Layers, bottom to top: :mod:`~sklearn_sela.sinkhorn` (the solver),
:mod:`~sklearn_sela.assigner` (``SinkhornAssigner``) and
:mod:`~sklearn_sela.partition` (``BalancedGraphClustering``), :mod:`~sklearn_sela.data`
and :mod:`~sklearn_sela.backbones` (inputs, augmentation, image folders and
networks),
:mod:`~sklearn_sela.training` (the skorch self-labelling loop),
:mod:`~sklearn_sela.clusterer` (``SelfLabelClusterer``) and
:mod:`~sklearn_sela.cli` (the ``sela`` command).
"""

from .sinkhorn import (
    SinkhornResult,
    balanced_sizes,
    check_proportions,
    sinkhorn_knopp,
    soft_assignments,
)
from .assigner import SinkhornAssigner
from .clusterer import SelfLabelClusterer
from .partition import BalancedGraphClustering

__version__ = "0.1.0"

__all__ = [
    "BalancedGraphClustering",
    "SelfLabelClusterer",
    "SinkhornAssigner",
    "SinkhornResult",
    "balanced_sizes",
    "check_proportions",
    "sinkhorn_knopp",
    "soft_assignments",
]
