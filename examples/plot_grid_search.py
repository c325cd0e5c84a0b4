"""
Choosing K and T with a grid search
===================================

:class:`~sklearn_sela.SelfLabelClusterer` is a regular scikit-learn
estimator, so it fits in a :class:`~sklearn.pipeline.Pipeline` and can be
tuned with :class:`~sklearn.model_selection.GridSearchCV` -- without labels.
Its :meth:`~sklearn_sela.SelfLabelClusterer.score` is the normalised mutual
information between samples and predicted clusters on held-out data (the
quantity SeLa maximises, paper sec. 3.2): 1 when every held-out sample is
assigned with certainty and all clusters are used equally.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from sklearn_sela import SelfLabelClusterer
from sklearn_sela.metrics import cluster_accuracy

QUICK = os.environ.get("SELA_EXAMPLES_QUICK") == "1"
X, y = load_digits(return_X_y=True)
if QUICK:
    X, y = X[:300], y[:300]
max_epochs = 1 if QUICK else 15

# %%
# The search
# ----------
# The number of clusters K and of heads T (``n_heads``), three-fold
# cross-validated: each candidate is trained on two folds and scored on the
# third.
pipe = make_pipeline(
    MinMaxScaler(),
    SelfLabelClusterer(max_epochs=max_epochs, batch_size=128, random_state=0),
)
grid = {
    "selflabelclusterer__n_clusters": [5, 10, 20],
    "selflabelclusterer__n_heads": [1, 3],
}
search = GridSearchCV(pipe, grid, cv=3).fit(X)
print("best:", search.best_params_, f"score {search.best_score_:.3f}")

# %%
# Held-out information per setting
# --------------------------------
results = search.cv_results_
fig, ax = plt.subplots(figsize=(6, 3.5))
for t in grid["selflabelclusterer__n_heads"]:
    rows = np.flatnonzero(results["param_selflabelclusterer__n_heads"] == t)
    ks = np.asarray(results["param_selflabelclusterer__n_clusters"][rows], dtype=int)
    ax.errorbar(ks, results["mean_test_score"][rows], yerr=results["std_test_score"][rows],
                marker="o", capsize=3, label=f"T = {t}")
ax.set_xlabel("number of clusters K")
ax.set_ylabel("held-out score (normalised MI)")
ax.set_xticks(grid["selflabelclusterer__n_clusters"])
ax.legend()
ax.set_title("Grid search over K and T")
plt.show()

# %%
# What the score measures
# -----------------------
# The held-out score rewards clusterings that new samples fall into
# confidently and evenly. Coarser clusterings (small K) are usually easier to
# predict on unseen samples than fine ones, so the score tends to favour
# them: it tells which settings generalise, not which match classes one has
# in mind. Since we happen to know the true digits, we can check every
# candidate against them (the search itself never used them).
for params in search.cv_results_["params"]:
    est = pipe.set_params(**params).fit(X)
    acc = cluster_accuracy(y, est.predict(X))
    print(f"K={params['selflabelclusterer__n_clusters']:2d} "
          f"T={params['selflabelclusterer__n_heads']}: accuracy vs digits {acc:.3f}")
