"""
Label transfer: training a new model on self-labels
===================================================

The labels SeLa assigns are useful on their own: a different model can be
trained from scratch on them with plain supervised learning (paper sec. 4.3,
table 5). Here an MLP *teacher* self-labels the digits as 64 pixel values;
a convolutional *student*, which sees them as 8x8 images, is then trained on
the teacher's labels with skorch, using the conv net that
:func:`~sklearn_sela.backbones.make_backbone` builds for small images.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
from skorch import NeuralNetClassifier
from sklearn.datasets import load_digits
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import train_test_split

from sklearn_sela import SelfLabelClusterer
from sklearn_sela.backbones import make_backbone
from sklearn_sela.data import InputInfo
from sklearn_sela.metrics import clustering_scores

QUICK = os.environ.get("SELA_EXAMPLES_QUICK") == "1"
digits = load_digits()
X, y = digits.data / 16.0, digits.target
if QUICK:
    X, y = X[:400], y[:400]
teacher_epochs, student_epochs = (2, 2) if QUICK else (100, 30)
idx_train, idx_test = train_test_split(np.arange(len(X)), test_size=0.3, random_state=0)

# %%
# The teacher: self-labelling
# ---------------------------
teacher = SelfLabelClusterer(n_clusters=10, max_epochs=teacher_epochs, random_state=0)
teacher.fit(X[idx_train])
self_labels = teacher.labels_  # the "cluster" column of `sela fit`'s labels.csv

# %%
# The student: supervised training on the self-labels
# ---------------------------------------------------
# Images of shape (N, 1, 8, 8); a conv net backbone and one linear layer.
torch.manual_seed(0)
images = X.reshape(-1, 1, 8, 8).astype(np.float32)
backbone, dim = make_backbone("convnet", InputInfo("image", (1, 8, 8), len(idx_train)))
student = NeuralNetClassifier(
    torch.nn.Sequential(backbone, torch.nn.Linear(dim, 10)),
    criterion=torch.nn.CrossEntropyLoss,
    optimizer=torch.optim.SGD,
    optimizer__momentum=0.9,
    lr=0.05,
    max_epochs=student_epochs,
    batch_size=128,
    train_split=None,
    verbose=0,
)
student.fit(images[idx_train], self_labels.astype(np.int64))

# %%
# Does the student reproduce the clustering on unseen digits?
# -----------------------------------------------------------
teacher_test = teacher.predict(X[idx_test])
student_test = student.predict(images[idx_test])
for name, labels in [("teacher", teacher_test), ("student", student_test)]:
    s = clustering_scores(y[idx_test], labels)
    print(f"{name}: ACC {s['acc']:.3f}  NMI {s['nmi']:.3f} against the true digits")
agree = clustering_scores(teacher_test, student_test)
print(f"student vs teacher clusters: ACC {agree['acc']:.3f}  NMI {agree['nmi']:.3f}")

fig, ax = plt.subplots(figsize=(4.5, 4))
ax.imshow(confusion_matrix(teacher_test, student_test, labels=range(10)), cmap="Blues")
ax.set_xlabel("student's cluster")
ax.set_ylabel("teacher's cluster")
ax.set_title("Held-out digits: teacher vs student")
plt.show()

# %%
# The student was never told which digit is which, only which cluster the
# teacher put each training image in; a diagonal confusion matrix means the
# clustering transferred to a model with another architecture and input.
