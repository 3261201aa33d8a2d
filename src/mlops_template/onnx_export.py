"""The fitted pipeline as an ONNX graph that computes what scikit-learn computes, bit for bit where
it matters, and the parity check that proves it before a package is allowed to use it.

Why not skl2onnx: version 1.20 converts none of the template's pipelines as they are (the
categorical imputer with NaN as its missing value, a bool attribute in the histogram gradient
boosting converter, no double kernels for the imputer in onnxruntime), and its float32 route
changes predicted classes when a value sits exactly on a split point, which grid-like data such as
0.1 mm and 25 g measurements does all the time. So the graph is built here from standard operators
with the `onnx` library, in float64 throughout, from the fitted attributes of each step:

- numeric columns: NaN replaced by the imputer's statistics, then `(x - mean) / scale`;
- categorical columns: text in (missing as the imputer's fill value), one 0/1 column per training
  level (`Equal`), unseen levels all zeros, as `OneHotEncoder(handle_unknown="ignore")`;
- logistic regression: `X @ coef.T + intercept`, then softmax (or the logistic for two classes);
- decision trees and random forests: `TreeEnsemble` (ai.onnx.ml 5) with the float64 thresholds;
  the input is rounded through float32 first, because scikit-learn's trees compare float32 values
  with float64 thresholds;
- histogram gradient boosting: `TreeEnsemble` on the float64 values (as scikit-learn compares
  them), summed with the baseline, then softmax or the logistic.

The graph has two inputs, `numeric` (float64, NaN for missing) and `categorical` (text), each a
matrix with one column per feature of that kind in schema order, and two outputs: `probabilities`
(one column per class, in the pipeline's class order) and `scaled` (the numeric columns after
imputation and scaling, which the server checks against float32's range as it does for joblib).

What this reads beyond scikit-learn's documented attributes (`HistGradientBoostingClassifier`'s
`_predictors` and `_baseline_prediction`, the tree node arrays) is read here only; the tests in
tests/test_onnx_export.py fail naming the library versions when an upgrade changes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

OPSET = 21
ML_OPSET = 5  # TreeEnsemble with float64 thresholds and weights
IR_VERSION = 10  # what onnxruntime 1.26 reads
NUMERIC_INPUT = "numeric"
CATEGORICAL_INPUT = "categorical"
PROBABILITIES = "probabilities"
SCALED = "scaled"
# The parity gate: any probability further apart than this, or any other predicted class, fails.
TOLERANCE = 1e-6
BRANCH_LEQ = 0


class ConversionError(Exception):
    """The pipeline has a step or setting this converter does not translate exactly."""


@dataclass(frozen=True)
class Parity:
    """How the ONNX graph's answers compare with scikit-learn's on a set of rows."""

    rows: int
    max_difference: float
    changed_classes: int

    @property
    def holds(self) -> bool:
        """True when every probability is within TOLERANCE and no predicted class differs."""
        return self.max_difference <= TOLERANCE and self.changed_classes == 0


def versions() -> str:
    """The libraries this converter depends on, for messages when something breaks."""
    import onnxruntime
    import sklearn

    return (
        f"scikit-learn {sklearn.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )


# --- the graph ------------------------------------------------------------------------------


class Graph:
    """Nodes and constants of the graph being built, with fresh names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def constant(self, value: np.ndarray, stem: str = "const") -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], domain: str = "", **attributes: Any) -> str:
        output = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], domain=domain, **attributes))
        return output

    def output(self, source: str, name: str) -> None:
        """Expose `source` as the graph output `name`."""
        self.nodes.append(helper.make_node("Identity", [source], [name]))


def step_names(pipeline: Any) -> list[str]:
    """The names of a Pipeline's steps ([] for anything else)."""
    return [name for name, _ in getattr(pipeline, "steps", [])]


def _check_steps(names: list[str], expected: list[str], where: str) -> None:
    """ConversionError naming the first step the export does not translate, if any."""
    if names != expected:
        extra = [name for name in names if name not in expected] or names
        raise ConversionError(
            f"the {where} has the step(s) {extra} (steps {names}); the ONNX export translates "
            f"{expected} only"
        )


def _named_steps(pipeline: Any) -> tuple[Any, Any]:
    """(preprocessing ColumnTransformer, estimator) of the template's pipeline."""
    from sklearn.compose import ColumnTransformer

    from mlops_template.model import ESTIMATOR, PREPROCESS

    _check_steps(step_names(pipeline), [PREPROCESS, ESTIMATOR], "pipeline")
    preprocess, estimator = pipeline.steps[0][1], pipeline.steps[1][1]
    if not isinstance(preprocess, ColumnTransformer):
        raise ConversionError("the preprocessing step is not a ColumnTransformer")
    return preprocess, estimator


def _transformers(preprocess: Any, schema: dict[str, Any]) -> tuple[Any, Any]:
    """The fitted numeric and categorical sub-pipelines, checked to be the template's."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from mlops_template.dataset import CATEGORICAL, NUMERIC, feature_names
    from mlops_template.model import CATEGORICAL_COLUMNS, ENCODE, IMPUTE, NUMERIC_COLUMNS, SCALE

    expected = {
        NUMERIC_COLUMNS: feature_names(schema, NUMERIC),
        CATEGORICAL_COLUMNS: feature_names(schema, CATEGORICAL),
    }
    fitted = {
        name: (transformer, list(columns))
        for name, transformer, columns in preprocess.transformers_
        if name != "remainder"
    }
    numeric, categorical = None, None
    for name, columns in expected.items():
        if not columns:
            continue
        if name not in fitted or fitted[name][1] != columns:
            raise ConversionError(f"the {name} columns are not {columns}")
        transformer = fitted[name][0]
        wanted = [IMPUTE, SCALE] if name == NUMERIC_COLUMNS else [IMPUTE, ENCODE]
        _check_steps(step_names(transformer), wanted, f"{name} preprocessing")
        steps = dict(transformer.steps)
        if name == NUMERIC_COLUMNS:
            imputer, scaler = steps.get(IMPUTE), steps.get(SCALE)
            if not isinstance(imputer, SimpleImputer) or not isinstance(scaler, StandardScaler):
                raise ConversionError("numeric preprocessing is not SimpleImputer + StandardScaler")
            if not (isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)):
                raise ConversionError("the numeric imputer does not treat NaN as missing")
            if imputer.add_indicator:
                raise ConversionError("the numeric imputer adds indicator columns")
            numeric = (imputer, scaler)
        else:
            imputer, encoder = steps.get(IMPUTE), steps.get(ENCODE)
            if not isinstance(imputer, SimpleImputer) or not isinstance(encoder, OneHotEncoder):
                raise ConversionError(
                    "categorical preprocessing is not SimpleImputer + OneHotEncoder"
                )
            if imputer.strategy != "constant" or imputer.add_indicator:
                raise ConversionError("the categorical imputer does not fill a constant")
            if encoder.handle_unknown != "ignore" or encoder.drop is not None:
                raise ConversionError("the one-hot encoder drops columns or rejects unseen levels")
            if getattr(encoder, "_infrequent_enabled", False):
                raise ConversionError("the one-hot encoder groups infrequent levels")
            categorical = (imputer, encoder)
    return numeric, categorical


def _preprocess(graph: Graph, numeric: Any, categorical: Any) -> tuple[list[str], str | None]:
    """Nodes for the ColumnTransformer; (its output blocks in order, the scaled numeric block)."""
    blocks, scaled = [], None
    if numeric is not None:
        imputer, scaler = numeric
        statistics = np.asarray(imputer.statistics_, dtype=np.float64).reshape(1, -1)
        filled = graph.op(
            "Where",
            [graph.op("IsNaN", [NUMERIC_INPUT]), graph.constant(statistics), NUMERIC_INPUT],
        )
        scaled = filled
        if scaler.with_mean:
            mean = np.asarray(scaler.mean_, dtype=np.float64).reshape(1, -1)
            scaled = graph.op("Sub", [scaled, graph.constant(mean)])
        if scaler.with_std:
            scale = np.asarray(scaler.scale_, dtype=np.float64).reshape(1, -1)
            scaled = graph.op("Div", [scaled, graph.constant(scale)])
        blocks.append(scaled)
    if categorical is not None:
        _, encoder = categorical
        for index, levels in enumerate(encoder.categories_):
            if not all(isinstance(level, str) for level in levels):
                raise ConversionError("a categorical column has levels that are not text")
            column = graph.op(
                "Slice",
                [
                    CATEGORICAL_INPUT,
                    graph.constant(np.array([index], dtype=np.int64)),
                    graph.constant(np.array([index + 1], dtype=np.int64)),
                    graph.constant(np.array([1], dtype=np.int64)),
                ],
            )
            levels_row = graph.constant(np.array(list(levels), dtype=object).reshape(1, -1))
            equal = graph.op("Equal", [column, levels_row])
            blocks.append(graph.op("Cast", [equal], to=TensorProto.DOUBLE))
    return blocks, scaled


def _classes_output(graph: Graph, raw: str, n_classes: int) -> str:
    """Probabilities from raw scores: softmax, or for two classes the logistic of one score."""
    if n_classes == 2:
        positive = graph.op("Sigmoid", [raw])
        negative = graph.op("Sub", [graph.constant(np.array([[1.0]])), positive])
        return graph.op("Concat", [negative, positive], axis=1)
    return graph.op("Softmax", [raw], axis=1)


def _tree_nodes(
    left: np.ndarray,
    right: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    is_leaf: np.ndarray,
    missing_left: np.ndarray,
    leaf_values: np.ndarray,
) -> tuple[list[tuple], list[float], int]:
    """One tree in TreeEnsemble's layout: (branch rows, leaf weights, root reference).

    A reference is (index, is_leaf). Branch rows are (feature, threshold, true ref, false ref,
    missing goes true). `leaf_values[node]` is the weight of a leaf.
    """
    branches: list[tuple] = []
    leaves: list[float] = []
    where: dict[int, tuple[int, bool]] = {}
    order = []
    stack = [0]
    while stack:  # depth first, so every node is numbered before its parent refers to it below
        node = stack.pop()
        order.append(node)
        if not is_leaf[node]:
            stack += [int(right[node]), int(left[node])]
    for node in order:
        if is_leaf[node]:
            where[node] = (len(leaves), True)
            leaves.append(float(leaf_values[node]))
        else:
            where[node] = (len(branches), False)
            branches.append(None)
    for node in order:
        if not is_leaf[node]:
            index = where[node][0]
            branches[index] = (
                int(feature[node]), float(threshold[node]),
                where[int(left[node])], where[int(right[node])], bool(missing_left[node]),
            )  # fmt: skip
    return branches, leaves, where[0]


def _tree_ensemble(graph: Graph, source: str, trees: list[tuple[Any, int]], n_targets: int) -> str:
    """A TreeEnsemble node summing the given trees, each `(nodes, target)`, per target.

    A tree that is a single leaf adds a constant: it goes into a bias added after the node (an
    ensemble node whose branch leads to the same leaf both ways does not compute that leaf's value
    in onnxruntime 1.26).
    """
    splits, features, modes, true_ids, true_leafs, false_ids, false_leafs, missing = (
        [], [], [], [], [], [], [], []
    )  # fmt: skip
    weights, targets, roots = [], [], []
    bias = np.zeros((1, n_targets), dtype=np.float64)
    for (branches, leaves, root), target in trees:
        if root[1]:
            bias[0, target] += leaves[root[0]]
            continue
        bases = (len(splits), len(weights))
        roots.append(bases[0] + root[0])
        for feature, threshold, true_ref, false_ref, missing_true in branches:
            splits.append(threshold), features.append(feature), modes.append(BRANCH_LEQ)
            true_id, true_leaf = _reference(true_ref, bases)
            false_id, false_leaf = _reference(false_ref, bases)
            true_ids.append(true_id), true_leafs.append(true_leaf)
            false_ids.append(false_id), false_leafs.append(false_leaf)
            missing.append(int(missing_true))
        weights += leaves
        targets += [target] * len(leaves)
    if not roots:  # every tree a single leaf: the bias on every row
        rows = graph.op("Shape", [source], start=0, end=1)
        shape = graph.op("Concat", [rows, graph.constant(np.array([n_targets]))], axis=0)
        return graph.op("Expand", [graph.constant(bias), shape])
    summed = graph.op(
        "TreeEnsemble",
        [source],
        domain="ai.onnx.ml",
        aggregate_function=1,  # SUM
        post_transform=0,
        n_targets=n_targets,
        tree_roots=roots,
        nodes_featureids=features,
        nodes_modes=numpy_helper.from_array(np.array(modes, dtype=np.uint8)),
        nodes_splits=numpy_helper.from_array(np.array(splits, dtype=np.float64)),
        nodes_truenodeids=true_ids,
        nodes_trueleafs=true_leafs,
        nodes_falsenodeids=false_ids,
        nodes_falseleafs=false_leafs,
        nodes_missing_value_tracks_true=missing,
        leaf_targetids=targets,
        leaf_weights=numpy_helper.from_array(np.array(weights, dtype=np.float64)),
    )
    return graph.op("Add", [summed, graph.constant(bias)]) if bias.any() else summed


def _reference(ref: tuple[int, bool], bases: tuple[int, int]) -> tuple[int, int]:
    """A node reference in the ensemble's numbering: (index, 1 if a leaf else 0)."""
    index, leaf = ref
    return (bases[1] + index, 1) if leaf else (bases[0] + index, 0)


def _sklearn_trees(graph: Graph, features: str, estimators: list[Any], n_classes: int) -> str:
    """Mean of the trees' class fractions (a forest, or one tree), compared as scikit-learn does."""
    # scikit-learn's trees compare float32 values with float64 thresholds.
    single = graph.op("Cast", [features], to=TensorProto.FLOAT)
    rounded = graph.op("Cast", [single], to=TensorProto.DOUBLE)
    trees = []
    for estimator in estimators:
        tree = estimator.tree_
        if tree.n_outputs != 1:
            raise ConversionError("multi-output trees are not supported")
        leaf = tree.children_left == -1
        fractions = tree.value[:, 0, :] / tree.value[:, 0, :].sum(axis=1, keepdims=True)
        shares = fractions / len(estimators)
        for target in range(n_classes):
            trees.append(
                (
                    _tree_nodes(
                        tree.children_left, tree.children_right, tree.feature, tree.threshold,
                        leaf, np.zeros(tree.node_count, dtype=bool),
                        shares[:, target],
                    ),
                    target,
                )
            )  # fmt: skip
    return _tree_ensemble(graph, rounded, trees, n_classes)


def _estimator(graph: Graph, features: str, estimator: Any, n_features: int) -> str:
    """Nodes for the estimator on the preprocessed float64 matrix; its probabilities."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    n_classes = len(estimator.classes_)
    if getattr(estimator, "n_features_in_", n_features) != n_features:
        raise ConversionError("the estimator saw another number of features")
    if isinstance(estimator, LogisticRegression):
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        raw = graph.op(
            "Add",
            [
                graph.op("MatMul", [features, graph.constant(coef.T.copy())]),
                graph.constant(np.asarray(estimator.intercept_, dtype=np.float64).reshape(1, -1)),
            ],
        )
        return _classes_output(graph, raw, n_classes)
    if isinstance(estimator, DecisionTreeClassifier | ExtraTreeClassifier):
        return _sklearn_trees(graph, features, [estimator], n_classes)
    if isinstance(estimator, RandomForestClassifier | ExtraTreesClassifier):
        return _sklearn_trees(graph, features, list(estimator.estimators_), n_classes)
    if isinstance(estimator, HistGradientBoostingClassifier):
        return _boosting(graph, features, estimator, n_classes)
    raise ConversionError(f"{type(estimator).__name__} has no exact ONNX translation here")


def _boosting(graph: Graph, features: str, estimator: Any, n_classes: int) -> str:
    """Histogram gradient boosting: baseline plus the sum of leaf values, then the link."""
    per_iteration = 1 if n_classes == 2 else n_classes
    trees = []
    for iteration in estimator._predictors:
        if len(iteration) != per_iteration:
            raise ConversionError("unexpected number of trees per boosting iteration")
        for target, predictor in enumerate(iteration):
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise ConversionError("categorical splits inside the boosting trees")
            trees.append(
                (
                    _tree_nodes(
                        nodes["left"], nodes["right"], nodes["feature_idx"],
                        nodes["num_threshold"], nodes["is_leaf"].astype(bool),
                        nodes["missing_go_to_left"].astype(bool),
                        nodes["value"],
                    ),
                    target,
                )
            )  # fmt: skip
    summed = _tree_ensemble(graph, features, trees, per_iteration)
    baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(1, -1)
    raw = graph.op("Add", [summed, graph.constant(baseline)])
    return _classes_output(graph, raw, n_classes)


def to_onnx(pipeline: Pipeline, schema: dict[str, Any]) -> bytes:
    """The ONNX model of a fitted template pipeline; ConversionError if it cannot be exact."""
    from mlops_template.dataset import CATEGORICAL, NUMERIC, feature_names

    preprocess, estimator = _named_steps(pipeline)
    numeric, categorical = _transformers(preprocess, schema)
    graph = Graph()
    blocks, scaled = _preprocess(graph, numeric, categorical)
    features = blocks[0] if len(blocks) == 1 else graph.op("Concat", blocks, axis=1)
    n_features = len(getattr(preprocess, "get_feature_names_out", lambda: [])())
    probabilities = _estimator(graph, features, estimator, n_features)
    graph.output(probabilities, PROBABILITIES)
    n_numeric = len(feature_names(schema, NUMERIC))
    n_categorical = len(feature_names(schema, CATEGORICAL))
    double, text = TensorProto.DOUBLE, TensorProto.STRING
    n_classes = len(estimator.classes_)
    inputs = []
    outputs = [helper.make_tensor_value_info(PROBABILITIES, double, [None, n_classes])]
    if n_numeric:
        inputs.append(helper.make_tensor_value_info(NUMERIC_INPUT, double, [None, n_numeric]))
        graph.output(scaled, SCALED)
        outputs.append(helper.make_tensor_value_info(SCALED, double, [None, n_numeric]))
    if n_categorical:
        inputs.append(helper.make_tensor_value_info(CATEGORICAL_INPUT, text, [None, n_categorical]))
    body = helper.make_graph(
        graph.nodes, "mlops_template_pipeline", inputs, outputs, graph.initializers
    )
    model = helper.make_model(
        body,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="mlops-template",
    )
    model.ir_version = IR_VERSION
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # the checker raises several types; any means a broken graph
        raise ConversionError(f"the ONNX checker rejects the graph: {error}") from None
    return model.SerializeToString()


# --- running it, and the parity gate ---------------------------------------------------------


def session(model: bytes) -> Any:
    """An onnxruntime session on one thread, as the server runs it."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def feeds(frame: pd.DataFrame, schema: dict[str, Any], fill_value: str) -> dict[str, np.ndarray]:
    """The graph's inputs for a frame of raw feature columns (as the server builds them)."""
    from mlops_template.dataset import CATEGORICAL, NUMERIC, feature_names

    inputs = {}
    numeric = feature_names(schema, NUMERIC)
    if numeric:
        inputs[NUMERIC_INPUT] = frame[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
    categorical = feature_names(schema, CATEGORICAL)
    if categorical:
        text = frame[categorical].astype(object)
        inputs[CATEGORICAL_INPUT] = text.where(text.notna(), fill_value).to_numpy(dtype=object)
    return inputs


def fill_value(pipeline: Pipeline) -> str:
    """What the categorical imputer fills missing text with (what the server sends for null)."""
    from mlops_template.model import CATEGORICAL_COLUMNS, IMPUTE, MISSING_LEVEL

    preprocess, _ = _named_steps(pipeline)
    for name, transformer, _columns in preprocess.transformers_:
        if name == CATEGORICAL_COLUMNS:
            return str(dict(transformer.steps)[IMPUTE].fill_value)
    return MISSING_LEVEL


def check_parity(
    pipeline: Pipeline, model: bytes, frame: pd.DataFrame, schema: dict[str, Any]
) -> Parity:
    """Compare the graph's probabilities and classes with scikit-learn's on `frame`."""
    expected = pipeline.predict_proba(frame)
    got = session(model).run([PROBABILITIES], feeds(frame, schema, fill_value(pipeline)))[0]
    difference = np.abs(got - expected)
    return Parity(
        rows=len(frame),
        max_difference=float(np.nanmax(difference)) if difference.size else 0.0,
        changed_classes=int((got.argmax(axis=1) != expected.argmax(axis=1)).sum()),
    )


def parity_rows(
    train: pd.DataFrame, test: pd.DataFrame, schema: dict[str, Any], random_rows: int, seed: int
) -> pd.DataFrame:
    """The rows the gate checks: the test split, edge rows, and random rows on the data's grid.

    Edge rows: each feature missing alone, everything missing, unseen and empty levels, values far
    beyond the training range. Random rows take each numeric value from the training values and
    the midpoints between neighbours, which is where tree thresholds sit.
    """
    import pandas as pd

    from mlops_template.dataset import CATEGORICAL, NUMERIC, feature_names

    rng = np.random.default_rng(seed)
    numeric, categorical = feature_names(schema, NUMERIC), feature_names(schema, CATEGORICAL)
    base = train.iloc[[0]].reset_index(drop=True)
    edges = []
    for name in train.columns:
        row = base.copy()
        row[name] = np.nan
        edges.append(row)
    edges.append(pd.DataFrame({name: [np.nan] for name in train.columns}).astype(train.dtypes))
    for name in categorical:
        for level in ("never seen in training", ""):
            row = base.copy()
            row[name] = level
            edges.append(row)
    for name in numeric:
        values = train[name].dropna().to_numpy(dtype=np.float64)
        low, high = (values.min(), values.max()) if values.size else (0.0, 1.0)
        span = max(high - low, 1.0)
        for value in (low - 100 * span, high + 100 * span, 0.0, -1e12, 1e12):
            row = base.copy()
            row[name] = value
            edges.append(row)
    grid = {}
    for name in numeric:
        values = np.unique(train[name].dropna().to_numpy(dtype=np.float64))
        candidates = (
            np.concatenate([values, (values[:-1] + values[1:]) / 2]) if values.size else [0.0]
        )
        grid[name] = rng.choice(candidates, size=random_rows)
    for name in categorical:
        levels = train[name].dropna().unique()
        grid[name] = rng.choice(levels, size=random_rows) if levels.size else ["x"] * random_rows
    random_frame = pd.DataFrame(grid)[list(train.columns)]
    for name in train.columns:  # a few missing values everywhere
        random_frame.loc[rng.random(random_rows) < 0.02, name] = np.nan
    frames = [test, *edges, random_frame.astype(train.dtypes, errors="ignore")]
    return pd.concat([frame[list(train.columns)] for frame in frames], ignore_index=True)
