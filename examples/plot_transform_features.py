"""
Learned features for a downstream classifier
============================================

:meth:`~sklearn_sela.SelfLabelClusterer.transform` returns the backbone
features :math:`\\Phi(x)` that SeLa learned without labels. Here they feed a
linear classifier (a *linear probe*, paper sec. 4.1) and the weighted
k-nearest-neighbour classifier of the paper's appendix, next to the raw
pixels and next to a network trained the same way on random labels that are
never updated (``n_label_updates=0``, the ablation of the paper's table 1).
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_sela import SelfLabelClusterer
from sklearn_sela.metrics import linear_probe_accuracy, weighted_knn_accuracy

QUICK = os.environ.get("SELA_EXAMPLES_QUICK") == "1"
X, y = load_digits(return_X_y=True)
X = X / 16.0
if QUICK:
    X, y = X[:400], y[:400]
max_epochs = 2 if QUICK else 60
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)

# %%
# Unsupervised training
# ---------------------
# Over-clustering (K = 30 for 10 digits) and three heads, as the paper
# recommends for representation learning. The labels ``y`` are not used.
sela = SelfLabelClusterer(n_clusters=30, n_heads=3, max_epochs=max_epochs, random_state=0)
sela.fit(X_train)
random_labels = SelfLabelClusterer(n_clusters=30, n_heads=3, max_epochs=max_epochs,
                                   n_label_updates=0, random_state=0).fit(X_train)

# %%
# A classifier on the features
# ----------------------------
# ``transform`` makes the fitted clusterer a feature extractor; here a
# logistic regression is trained on its output, with the true labels. The
# features come whitened by their statistics on the training data, so that
# every direction in which they vary weighs the same in the cosine
# similarity of a nearest-neighbour classifier.
F_train, F_test = sela.transform(X_train), sela.transform(X_test)
clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(F_train, y_train)
print(f"logistic regression on SeLa features: {clf.score(F_test, y_test):.3f}")

# %%
# Comparing representations
# -------------------------
representations = {
    "raw pixels": (X_train, X_test),
    "random labels\n(no self-labelling)": (random_labels.transform(X_train),
                                          random_labels.transform(X_test)),
    "SeLa features": (F_train, F_test),
}
probe, knn = [], []
for name, (A, B) in representations.items():
    probe.append(linear_probe_accuracy(A, y_train, B, y_test))
    knn.append(weighted_knn_accuracy(A, y_train, B, y_test, k=min(50, len(A)), temperature=0.1))
    print(f"{name.splitlines()[0]:20s} linear probe {probe[-1]:.3f}  weighted kNN {knn[-1]:.3f}")

fig, ax = plt.subplots(figsize=(7, 3.5))
pos = np.arange(len(representations))
ax.bar(pos - 0.2, probe, width=0.4, label="linear probe")
ax.bar(pos + 0.2, knn, width=0.4, label="weighted kNN (k=50, T=0.1)")
ax.set_xticks(pos, list(representations))
ax.set_ylabel("test accuracy")
ax.set_ylim(0, 1)
ax.legend(loc="lower right")
ax.set_title("Digits: quality of the representations")
plt.show()

# %%
# On 8x8 digits the raw pixels are already a good representation, so the
# comparison that matters is between the two networks: the same architecture,
# data and schedule, once with self-labelling and once with fixed random
# labels.
