"""
Clustering handwritten digits
=============================

Self-label scikit-learn's 8x8 handwritten digits with
:class:`~sklearn_sela.SelfLabelClusterer`, compare the clusters with k-means
on the same pixels, and look at them: one row of random members per cluster,
as in figures A.5-A.8 of the SeLa paper. This is what ``sela demo`` does.
"""

# %%
# Data and settings
# -----------------
# The 1,797 digits as 64 grey levels scaled to [0, 1]. ``SELA_EXAMPLES_QUICK``
# shrinks the run to a few seconds for the tests (the clusters are then poor).
import os

import matplotlib.pyplot as plt
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from sklearn_sela import SelfLabelClusterer
from sklearn_sela.metrics import TrueLabelNMI, clustering_scores
from sklearn_sela.plotting import plot_cluster_montage, plot_label_nmi

QUICK = os.environ.get("SELA_EXAMPLES_QUICK") == "1"
n_samples = 400 if QUICK else None
max_epochs = 2 if QUICK else "auto"  # "auto": 200 epochs for 1,797 samples

digits = load_digits()
X = digits.data[:n_samples] / 16.0
y = digits.target[:n_samples]
images = digits.images[:n_samples]

# %%
# Self-labelling
# --------------
# Ten clusters. :class:`~sklearn_sela.metrics.TrueLabelNMI` records, at every
# label update, how well the heads' self-labels agree with the true digits --
# only for the plot below; training never sees them. ``labels_`` is what the
# trained network predicts for the training images (``model.predict(X)``).
model = SelfLabelClusterer(
    n_clusters=10,
    max_epochs=max_epochs,
    callbacks=[TrueLabelNMI(y)],
    random_state=0,
)
model.fit(X)
kmeans = KMeans(n_clusters=10, n_init=10, random_state=0).fit(X)

for name, labels in [("SeLa", model.labels_), ("k-means", kmeans.labels_)]:
    scores = clustering_scores(y, labels)
    print(f"{name:8s} ACC {scores['acc']:.3f}  NMI {scores['nmi']:.3f}  ARI {scores['ari']:.3f}")

# %%
# The clusters
# ------------
# Each row is one cluster with its size; the images are random members.
# SeLa's constraint keeps the clusters close to equal in size.
fig, ax = plt.subplots(figsize=(7, 6), layout="constrained")
plot_cluster_montage(images, model.labels_, n_per_cluster=12, ax=ax,
                     title="SeLa clusters of the digits")
plt.show()

# %%
# Label stability over training
# -----------------------------
# NMI between each labelling and the one before it (solid) climbs towards 1
# as the labels settle; NMI with the true digits (dashed) shows what the
# clusters capture. With the default ten heads, the lines are the median over
# the heads and the shaded bands their range. Compare figure A.1 of the paper.
fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
plot_label_nmi(model.history_, ax=ax)
plt.show()
