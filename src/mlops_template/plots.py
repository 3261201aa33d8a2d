"""Write the evaluation as DVC plot data (CSV) and as PNG images for reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlops_template.evaluate import Evaluation

# File names are part of the contract with dvc.yaml and the report command.
CONFUSION_CSV = "confusion.csv"
ROC_CSV = "roc.csv"
PRECISION_RECALL_CSV = "precision_recall.csv"
IMPORTANCE_CSV = "importance.csv"
IMAGES = "images"
IMAGE_NAMES = ("confusion_matrix.png", "roc.png", "precision_recall.png", "feature_importance.png")


def write_plot_data(evaluation: Evaluation, out_dir: Path) -> None:
    """CSV files that `dvc plots show/diff` renders with the templates named in dvc.yaml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (
        (CONFUSION_CSV, evaluation.confusion),
        (ROC_CSV, evaluation.roc),
        (PRECISION_RECALL_CSV, evaluation.precision_recall),
        (IMPORTANCE_CSV, evaluation.importance),
    ):
        frame.to_csv(out_dir / name, index=False, lineterminator="\n")


def write_images(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """PNG versions, one curve per class, for the pull-request report and MLflow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay, auc, precision_recall_curve, roc_curve

    from mlops_template.evaluate import MAX_CURVE_POINTS, spaced

    out_dir.mkdir(parents=True, exist_ok=True)
    actual = np.asarray(evaluation.actual)
    paths = [out_dir / name for name in IMAGE_NAMES]
    # One-vs-rest curves; for two classes the positive class alone says it all.
    curve_classes = evaluation.classes[1:] if len(evaluation.classes) == 2 else evaluation.classes

    figure, axes = plt.subplots(figsize=(5, 4.5))
    size = len(evaluation.classes)
    matrix = evaluation.confusion["count"].to_numpy().reshape(size, size)
    ConfusionMatrixDisplay(matrix, display_labels=evaluation.classes).plot(
        ax=axes, colorbar=False, xticks_rotation=45
    )
    axes.set_title("Confusion matrix (test split)")
    _save(figure, paths[0])

    figure, axes = plt.subplots(figsize=(5, 4.5))
    for index, label in enumerate(evaluation.classes):
        if label not in curve_classes:
            continue
        fpr, tpr, _ = roc_curve(actual == label, evaluation.probabilities[:, index])
        shown = spaced(len(fpr), MAX_CURVE_POINTS)
        axes.plot(fpr[shown], tpr[shown], label=f"{label} (AUC {auc(fpr, tpr):.3f})")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC (one vs rest)")
    axes.legend(loc="lower right")
    _save(figure, paths[1])

    figure, axes = plt.subplots(figsize=(5, 4.5))
    for index, label in enumerate(evaluation.classes):
        if label not in curve_classes:
            continue
        precision, recall, _ = precision_recall_curve(
            actual == label, evaluation.probabilities[:, index]
        )
        shown = spaced(len(recall), MAX_CURVE_POINTS)
        axes.plot(recall[shown], precision[shown], label=str(label))
    axes.set(
        xlabel="Recall", ylabel="Precision", title="Precision-recall (one vs rest)", ylim=(0, 1.05)
    )
    axes.legend(loc="lower left")
    _save(figure, paths[2])

    importance = evaluation.importance.iloc[::-1]
    figure, axes = plt.subplots(figsize=(5, max(2.5, 0.3 * len(importance) + 1)))
    axes.barh(importance["feature"].astype(str), importance["importance"])
    axes.set(xlabel=f"Importance ({evaluation.importance_method})", title="Feature importance")
    _save(figure, paths[3])
    return paths


def _save(figure: object, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    # No software/version stamp in the file: the bytes depend on the plot alone.
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)
