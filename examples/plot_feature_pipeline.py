"""
Balanced clusters of any features
=================================

:class:`~sklearn_sela.SelfLabelClusterer` clusters with its network:
``predict`` runs the trained heads. Its
:meth:`~sklearn_sela.SelfLabelClusterer.transform` features, or those of any
other embedding, can also be clustered on their own in a
:class:`~sklearn.pipeline.Pipeline`: here partitioned by
:class:`~sklearn_sela.BalancedGraphClustering`, which runs a balanced
spherical k-means on the features averaged over their nearest neighbours
and keeps the run that splits the fewest neighbourhoods. The same pipeline
works on the features of a pretrained network, whitened first with
``PCA(whiten=True)`` (``transform`` output already is).
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.pipeline import make_pipeline

from sklearn_sela import BalancedGraphClustering, SelfLabelClusterer
from sklearn_sela.metrics import clustering_scores

QUICK = os.environ.get("SELA_EXAMPLES_QUICK") == "1"
digits = load_digits()
X, y = digits.images / 16.0, digits.target
if QUICK:
    X, y = X[:400], y[:400]

# %%
# Features learned without labels, clustered in a pipeline
# --------------------------------------------------------
# The pipeline trains the network (its ``fit_transform`` gives the whitened
# backbone features of the images) and partitions those features.
pipe = make_pipeline(
    SelfLabelClusterer(n_clusters=10, max_epochs=3 if QUICK else 60, random_state=0),
    BalancedGraphClustering(n_clusters=10, random_state=0),
)
graph_labels = pipe.fit_predict(X)
sela = pipe[0]
features = sela.transform(X)

# %%
# Three partitions of the same images
# -----------------------------------
# The network's own clusters (``labels_``), k-means on its features, and the
# balanced neighbourhood-graph partition of the pipeline.
methods = {
    "SelfLabelClusterer.labels_": sela.labels_,
    "KMeans": KMeans(n_clusters=10, n_init=10, random_state=0).fit_predict(features),
    "BalancedGraphClustering": graph_labels,
}
scores = {name: clustering_scores(y, labels) for name, labels in methods.items()}
for name, s in scores.items():
    print(f"{name.replace(chr(10), ' '):40s} ACC {s['acc']:.3f}  NMI {s['nmi']:.3f}")

fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
pos = np.arange(len(methods))
ax.bar(pos - 0.2, [s["acc"] for s in scores.values()], width=0.4, label="ACC")
ax.bar(pos + 0.2, [s["nmi"] for s in scores.values()], width=0.4, label="NMI")
ax.set_xticks(pos, list(methods), fontsize=8)
ax.set_ylim(0, 1)
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
ax.set_title("Digits: clusters of the SeLa features")
plt.show()
