"""scikit-learn's voxel metrics, the reference for core/tests/metrics_vs_sklearn.rs.

Usage: metrics_reference.py FILE

FILE: a first line "threshold T", then one voxel a line, "score label" (label 0 or 1).
Prints one JSON object: average_precision and roc_auc over the scores, and at the threshold
(score >= T is positive) f1, jaccard, precision and recall.
"""

import json
import sys

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
    roc_auc_score,
)


def main(path):
    with open(path) as f:
        name, threshold = f.readline().split()
        if name != "threshold":
            sys.exit(f"{path}: first line must be 'threshold T', got {name!r}")
        voxels = np.loadtxt(f, ndmin=2)
    scores, truth = voxels[:, 0], voxels[:, 1].astype(bool)
    predicted = scores >= float(threshold)
    print(
        json.dumps(
            {
                "average_precision": average_precision_score(truth, scores),
                "roc_auc": roc_auc_score(truth, scores),
                "f1": f1_score(truth, predicted),
                "jaccard": jaccard_score(truth, predicted),
                "precision": precision_score(truth, predicted),
                "recall": recall_score(truth, predicted),
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
