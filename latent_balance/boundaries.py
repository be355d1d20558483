"""Attribute boundaries in latent space: one linear SVM per attribute, calibrated on held-out probes.

For each attribute the probes' hard labels (argmax of the labeler probabilities) are fitted by a
linear SVM (scikit-learn ``LinearSVC``'s primal problem: squared hinge, L2, intercept kept, solved to
machine precision by a generalized Newton method, see :class:`_SquaredHingeSolver`) on standardized
latents. The boundary is expressed in the *original* latent coordinates as a unit normal ``n`` and an
offset ``b``: the signed distance of a latent ``x`` to the boundary is ``n . x + b`` (latent units;
positive on the side of the attribute's second class for a binary attribute). Multi-class attributes
get one-vs-rest boundaries (one normal per class).

P(class | latent) is calibrated on held-out probes that the SVM never saw: Platt scaling (a logistic
regression on the signed distance) for binary attributes, a multinomial logistic regression on the
per-class signed distances for multi-class ones, or isotonic regression (``calibration="isotonic"``).
The reported calibration error (ECE, 15 equal-width bins of top-label confidence) and log-loss are
cross-fitted: the held-out set is split in two halves, each half is scored by a calibrator fitted on
the other, so the numbers are not measured on the calibrator's own training data. The calibrator used
afterwards is refitted on the whole held-out set.

Files (:meth:`BoundarySet.save` / :meth:`BoundarySet.load`) are ``.npz`` archives of plain arrays plus
a JSON metadata string, read with ``allow_pickle=False``: loading cannot execute code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._utils import package_versions, read_npz, write_npz

__all__ = ["BoundarySet", "BoundaryFileError", "expected_calibration_error"]

FORMAT = "latent-balance-boundaries"
FORMAT_VERSION = 1
ECE_BINS = 15


class BoundaryFileError(ValueError):
    """A boundary file is missing, corrupt, or not a latent-balance boundary file."""


# ------------------------------------------------------------------------------------------------
# small numerical helpers (shared with subgroups.py)
# ------------------------------------------------------------------------------------------------
def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error.

    Args:
        probs:  float [N, C] predicted class probabilities.
        labels: int [N] observed classes.
        bins:   number of equal-width confidence bins on [0, 1].

    Returns:
        ``sum_b (n_b / N) |accuracy_b - confidence_b|`` (0 = perfectly calibrated).
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return math.nan
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(correct[m].mean() - conf[m].mean())
    return float(total / len(labels))


def _log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.mean(np.log(p)))


def _split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train / held-out split of ``range(n)`` (sorted index arrays)."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout}")
    perm = np.random.default_rng([int(seed), 0xB0]).permutation(n)
    n_hold = int(round(holdout * n))
    if n_hold < 20 or n - n_hold < 20:
        raise ValueError(f"{n} probes are too few to fit and calibrate (need >= 20 in the training and in the "
                         f"held-out part; holdout={holdout}); build more probes")
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng([int(seed), 0xCF]).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


# ------------------------------------------------------------------------------------------------
# the linear SVM: LinearSVC's primal problem, solved by a generalized Newton method
# ------------------------------------------------------------------------------------------------
def _cho_factor_1thread(H: np.ndarray):
    """Cholesky factor of a small SPD matrix on one BLAS thread: a (D+1)^2 factorization takes milliseconds,
    and threads waiting on each other cost more than that on a busy machine (measured: 30x the time)."""
    from scipy.linalg import cho_factor
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return cho_factor(H)


class _SquaredHingeSolver:
    """L2-regularized squared-hinge linear SVMs on one design matrix (LinearSVC's primal problem).

    For labels ``y_i`` in {-1, +1} and per-sample costs ``c_i`` (C times the class weight), minimizes

        f(v) = 1/2 |v|^2 + sum_i c_i max(0, 1 - y_i v . [x_i, 1])^2

    over ``v = [w, b]``: scikit-learn's ``LinearSVC(dual=False, loss="squared_hinge")``, which hands
    liblinear the intercept as a constant feature of value ``intercept_scaling = 1`` that is
    regularized like the weights. f is strictly convex, so the minimizer is unique and any solver
    converging to it fits the same boundary; liblinear (trust-region Newton with conjugate gradients,
    single-threaded, over a sparse copy of the data) stops at a relative gradient norm of 1e-4.

    Here: the generalized Newton method of Mangasarian ("A finite Newton method for classification",
    Optim. Methods Softw. 17, 2002), with Hessian ``I + 2 X_A^T diag(c_A) X_A`` over the active set A
    (``y_i v . x_i < 1``) factorized directly (D + 1 unknowns), and an exact line search (f is
    piecewise quadratic along a line). The Hessian is updated by the rows entering or leaving A, and
    the first step (from v = 0, where every row is active) shares one factorization among all
    problems with uniform costs, so the dominant work is one Gram matrix of the data plus the rows
    whose activity changes. It stops at a relative gradient norm of ``tol`` (1e-9: the optimum to
    machine precision, typically after 4 to 8 steps).
    """

    def __init__(self, X: np.ndarray, tol: float = 1e-9, max_iter: int = 100):
        self.X = np.ascontiguousarray(X, np.float64)
        self.tol, self.max_iter = float(tol), int(max_iter)
        self._first = {}  # rows key -> Cholesky factor of I + 2 c X~^T X~ for uniform cost c

    def _gram(self, rows: np.ndarray, wts: np.ndarray) -> np.ndarray:
        """X~^T diag(wts) X~ over `rows`, X~ = [X, 1] ([D + 1, D + 1])."""
        Xr = self.X[rows]
        Xw = Xr * wts[:, None]
        d = Xr.shape[1]
        out = np.empty((d + 1, d + 1))
        out[:d, :d] = Xw.T @ Xr
        out[:d, d] = out[d, :d] = Xw.sum(axis=0)
        out[d, d] = wts.sum()
        return out

    def solve(self, rows: np.ndarray, y: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, float, int]:
        """Minimize f over the samples `rows` (labels ±1 [n], costs > 0 [n]) -> (w [D], b, Newton steps).

        Raises:
            RuntimeError: no convergence within ``max_iter`` steps (not seen: finite termination).
        """
        from scipy.linalg import cho_solve

        X = self.X[rows]
        n, d = X.shape
        y, c = np.asarray(y, np.float64), np.asarray(c, np.float64)
        v = np.zeros(d + 1)
        m = np.zeros(n)                       # margins y_i v . x~_i
        act = np.ones(n, bool)
        uniform = bool(np.all(c == c[0]))
        H = factor = None
        if uniform:                           # every row active at v = 0: shared across problems
            key = (rows.tobytes(), float(c[0]))
            if key not in self._first:
                H0 = 2.0 * c[0] * self._gram(rows, np.ones(n))
                H0[np.diag_indices(d + 1)] += 1.0
                self._first = {key: (H0, _cho_factor_1thread(H0))}  # only the latest: one [D+1, D+1] pair
            H, factor = self._first[key]
            H = H.copy()
        else:
            H = 2.0 * self._gram(rows, c)
            H[np.diag_indices(d + 1)] += 1.0
        h_act = act.copy()
        g0 = None
        for step_no in range(self.max_iter + 1):
            ry = np.where(act, c * (1.0 - m), 0.0) * y
            g = v.copy()
            g[:d] -= 2.0 * (X.T @ ry)
            g[d] -= 2.0 * ry.sum()
            gn = float(np.linalg.norm(g))
            g0 = gn if g0 is None else g0
            if gn <= self.tol * g0 or gn == 0.0:
                return v[:d], float(v[d]), step_no
            if step_no == self.max_iter:
                break
            add, rem = act & ~h_act, h_act & ~act
            n_add, n_rem = int(add.sum()), int(rem.sum())
            if n_add + n_rem:
                if n_add + n_rem < int(act.sum()):   # update by the changed rows
                    if n_add:
                        H += 2.0 * self._gram(rows[add], c[add])
                    if n_rem:
                        H -= 2.0 * self._gram(rows[rem], c[rem])
                else:                                # fewer rows to add afresh
                    H = 2.0 * self._gram(rows[act], c[act])
                    H[np.diag_indices(d + 1)] += 1.0
                h_act = act.copy()
                factor = None
            if factor is None:
                factor = _cho_factor_1thread(H)
            p = -cho_solve(factor, g)
            # exact line search: phi(t) = f(v + t p) is convex piecewise quadratic; Newton on phi'
            dm = y * (X @ p[:d] + p[d])
            vp, pp = float(v @ p), float(p @ p)
            t = 1.0
            for _ in range(100):
                mt = m + t * dm
                a = mt < 1.0
                ca, da = c[a], dm[a]
                d1 = vp + t * pp - 2.0 * float(np.sum(ca * (1.0 - mt[a]) * da))
                d2 = pp + 2.0 * float(np.sum(ca * da * da))
                t_new = t - d1 / d2
                if abs(t_new - t) <= 1e-12 * max(1.0, abs(t)):
                    t = t_new
                    break
                t = t_new
            v = v + t * p
            m = m + t * dm
            act = m < 1.0
        raise RuntimeError(f"the SVM solver did not converge in {self.max_iter} Newton steps (relative gradient "
                           f"norm {gn / g0:.2e} > {self.tol:g})")


# ------------------------------------------------------------------------------------------------
# calibrators: features [N, F] -> probabilities over `k` classes, stored as plain arrays
# ------------------------------------------------------------------------------------------------
def _fit_logistic_calibrator(feats: np.ndarray, y: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Platt (k == 2, F == 1) or multinomial logistic calibration; classes absent from `y` get -inf."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    coef = np.zeros((k, feats.shape[1]))
    intercept = np.full(k, -np.inf)
    if len(present) == 1:  # degenerate: one class seen -> constant
        intercept[present[0]] = 0.0
        return {"coef": coef, "intercept": intercept}
    lr = LogisticRegression(C=1e4, max_iter=1000, tol=1e-8)
    lr.fit(feats, y)
    if len(present) == 2:
        # sklearn's binary form: logit(P(present[1])) = w.f + c  ->  softmax logits [0, w.f + c]
        coef[present[1]] = lr.coef_[0]
        intercept[present[0]] = 0.0
        intercept[present[1]] = lr.intercept_[0]
    else:
        coef[present] = lr.coef_
        intercept[present] = lr.intercept_
    return {"coef": coef, "intercept": intercept}


def _apply_logistic_calibrator(cal: Mapping[str, np.ndarray], feats: np.ndarray) -> np.ndarray:
    logits = feats @ cal["coef"].T + cal["intercept"]
    return _softmax(logits)


def _fit_isotonic_calibrator(feats: np.ndarray, y: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
    """Isotonic regression of 1{y == class} on each signed distance (one column: the pair of present classes)."""
    from sklearn.isotonic import IsotonicRegression

    out: dict[str, np.ndarray] = {}
    targets = [present[1]] if feats.shape[1] == 1 else list(present)
    for j, cls in enumerate(targets):
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
        iso.fit(feats[:, j], (y == cls).astype(np.float64))
        out[f"x{j}"] = np.asarray(iso.X_thresholds_, np.float64)
        out[f"y{j}"] = np.asarray(iso.y_thresholds_, np.float64)
    return out


def _apply_isotonic_calibrator(cal: Mapping[str, np.ndarray], feats: np.ndarray, present: np.ndarray,
                               k: int) -> np.ndarray:
    p = np.zeros((len(feats), k))
    if feats.shape[1] == 1:
        p1 = np.interp(feats[:, 0], cal["x0"], cal["y0"])
        p[:, present[0]], p[:, present[1]] = 1 - p1, p1
    else:
        for j, cls in enumerate(present):
            p[:, cls] = np.interp(feats[:, j], cal[f"x{j}"], cal[f"y{j}"])
    # isotonic fits can reach 0 and 1 exactly: keep a floor on the present classes so logs stay finite
    p[:, present] = np.clip(p[:, present], 1e-6, 1.0)
    return p / p.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------
class BoundarySet:
    """Per-attribute linear boundaries in latent space with calibrated posteriors.

    Args:
        C:            inverse regularization strength of the SVMs (on standardized latents).
        class_weight: ``None`` or ``"balanced"`` (as ``LinearSVC`` weighs classes).
        holdout:      fraction of probes held out for calibration and reporting (the SVMs are fitted
                      on the rest).
        calibration:  ``"platt"`` (logistic on the signed distances; default) or ``"isotonic"``.
        seed:         seed of the train / held-out split.
        max_iter:     solver iteration limit (Newton steps for ``"svm"``).
        solver:       ``"svm"`` (default: ``LinearSVC``'s problem, primal, squared hinge) or ``"logistic"``
                      (``LogisticRegression``, lbfgs).

    Fitted attributes (after :meth:`fit`):
        attributes_:   list of attribute names.
        classes_:      attribute -> tuple of class names.
        mean_, scale_: float64 [D] standardization of the latents (boundaries are reported unscaled).
        normals_:      attribute -> float64 [K, D] unit normals in latent coordinates; K = 1 for a
                       binary attribute (pointing to its second class), K = C for multi-class (one vs rest).
        offsets_:      attribute -> float64 [K]; signed distance = ``latent @ normals_[a].T + offsets_[a]``.
        present_:      attribute -> int [K'] classes seen in training (others get probability 0).
        report_:       attribute -> dict with ``accuracy`` (held-out, SVM decision), ``majority_accuracy``,
                       ``calibrated_accuracy``, ``ece``, ``log_loss``, ``majority_log_loss``,
                       ``n_train``, ``n_heldout``, ``class_counts`` (all probes).
        train_index_, heldout_index_: int [.] the split, indices into the probe set.
        heldout_proba_: attribute -> float64 [M, C] cross-fitted calibrated probabilities of the held-out probes.
        meta_:         generator description, labelers, probe count, settings, package versions.
    """

    def __init__(self, C: float = 1.0, class_weight: str | None = None, holdout: float = 0.2,
                 calibration: str = "platt", seed: int = 0, max_iter: int = 2000, solver: str = "svm"):
        if solver not in ("svm", "logistic"):
            raise ValueError(f"solver must be 'svm' (LinearSVC, primal) or 'logistic' (LogisticRegression, lbfgs), "
                             f"got {solver!r}")
        self.solver = solver
        if calibration not in ("platt", "isotonic"):
            raise ValueError(f"calibration must be 'platt' or 'isotonic', got {calibration!r}")
        if class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
        if not C > 0:
            raise ValueError(f"C must be positive, got {C}")
        self.C, self.class_weight, self.holdout = float(C), class_weight, float(holdout)
        self.calibration, self.seed, self.max_iter = calibration, int(seed), int(max_iter)

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, probes, attributes: Sequence[str] | None = None) -> "BoundarySet":
        """Fit boundaries and calibrators on a probe set.

        Args:
            probes:     a :class:`latent_balance.probes.ProbeSet` (latents [N, D], labeler probabilities).
            attributes: attributes to fit (default: all of the probe set's).

        Returns:
            self.
        """
        attributes = _check_attributes(probes, attributes)
        X = np.asarray(probes.latents, np.float64)
        if X.ndim != 2 or not np.all(np.isfinite(X)):
            raise ValueError("probe latents must be a finite [N, D] array")
        train, held = _split(len(X), self.holdout, self.seed)
        self.mean_ = X[train].mean(axis=0)
        sd = X[train].std(axis=0)
        self.scale_ = np.where(sd > 1e-12, sd, 1.0)
        Xs_train = (X[train] - self.mean_) / self.scale_
        self.attributes_ = list(attributes)
        self.classes_ = {a: tuple(probes.classes[a]) for a in attributes}
        self.normals_, self.offsets_, self.present_ = {}, {}, {}
        self.calibrators_: dict[str, dict[str, np.ndarray]] = {}
        self.report_, self.heldout_proba_ = {}, {}
        self.train_index_, self.heldout_index_ = train, held
        halves = _halves(len(held), self.seed)
        svm_solver = _SquaredHingeSolver(Xs_train, max_iter=self.max_iter)  # shared by the attributes
        for a in attributes:
            y = probes.labels(a)
            k = len(self.classes_[a])
            counts = np.bincount(y, minlength=k)
            self._fit_svm(a, Xs_train, y[train], k, svm_solver)
            feats = self._features(a, X[held])
            yh = y[held]
            # held-out accuracy of the SVM decision itself
            acc = float(np.mean(self._svm_predict(a, feats) == yh))
            train_counts = np.bincount(y[train], minlength=k)
            majority = int(np.argmax(train_counts))
            prior = np.clip(train_counts / train_counts.sum(), 1e-12, 1)
            # cross-fitted calibration on the two halves of the held-out set
            oof = np.zeros((len(held), k))
            for fit_idx, eval_idx in (halves, halves[::-1]):
                cal = self._fit_cal(a, feats[fit_idx], yh[fit_idx])
                oof[eval_idx] = self._apply_cal(a, cal, feats[eval_idx])
            self.calibrators_[a] = self._fit_cal(a, feats, yh)
            self.heldout_proba_[a] = oof
            self.report_[a] = {
                "accuracy": acc,
                "majority_accuracy": float(np.mean(yh == majority)),
                "calibrated_accuracy": float(np.mean(oof.argmax(axis=1) == yh)),
                "ece": expected_calibration_error(oof, yh),
                "log_loss": _log_loss(oof, yh),
                "majority_log_loss": _log_loss(np.broadcast_to(prior, (len(yh), k)), yh),
                "n_train": int(len(train)),
                "n_heldout": int(len(held)),
                "class_counts": {c: int(n) for c, n in zip(self.classes_[a], counts)},
            }
        gen = dict(probes.meta.get("generator", {}))
        labelers = {a: probes.meta.get("labelers", {}).get(a, {}) for a in attributes}
        self.meta_ = {
            "generator": gen,
            "labelers": labelers,
            "n_probes": int(len(X)),
            "latent_dim": int(X.shape[1]),
            "settings": {"C": self.C, "class_weight": self.class_weight, "holdout": self.holdout,
                         "calibration": self.calibration, "seed": self.seed, "solver": self.solver},
            "versions": package_versions(),
        }
        return self

    def _fit_svm(self, a: str, Xs: np.ndarray, y: np.ndarray, k: int, svm_solver: "_SquaredHingeSolver") -> None:
        counts = np.bincount(y, minlength=k)
        present = np.flatnonzero(counts >= 2)
        if len(present) < 2:
            seen = {self.classes_[a][j]: int(counts[j]) for j in range(k) if counts[j]}
            raise ValueError(f"attribute {a!r}: the training probes show only {seen}; a boundary needs at least two "
                             f"classes with >= 2 probes each (build more probes or drop the attribute)")
        mask = np.isin(y, present)
        if self.solver == "svm":
            self._fit_squared_hinge(a, svm_solver, np.flatnonzero(mask), y[mask], present)
            return
        from sklearn.linear_model import LogisticRegression

        svm = LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter)
        if len(present) > 2:  # one-vs-rest, like the SVM, so each class has its own boundary
            from sklearn.multiclass import OneVsRestClassifier

            svm = OneVsRestClassifier(svm)
        svm.fit(Xs[mask], y[mask])
        if len(present) > 2:
            svm.coef_ = np.vstack([e.coef_ for e in svm.estimators_])
            svm.intercept_ = np.concatenate([e.intercept_ for e in svm.estimators_])
        self._set_boundary(a, svm.coef_, svm.intercept_, present)

    def _fit_squared_hinge(self, a: str, svm_solver: "_SquaredHingeSolver", rows: np.ndarray, y: np.ndarray,
                           present: np.ndarray) -> None:
        """LinearSVC's boundaries (one for two classes, one vs rest for more) by :class:`_SquaredHingeSolver`.

        Costs as liblinear sets them: ``C * class_weight[y_i]`` for two classes; one vs rest for class j,
        ``C * class_weight[j]`` on its samples and ``C`` on the others.
        """
        from sklearn.utils.class_weight import compute_class_weight

        cw = (compute_class_weight(self.class_weight, classes=present, y=y) if self.class_weight is not None
              else np.ones(len(present)))
        idx = np.searchsorted(present, y)
        if len(present) == 2:
            problems = [(np.where(idx == 1, 1.0, -1.0), self.C * cw[idx])]
        else:
            problems = [(np.where(idx == j, 1.0, -1.0), np.where(idx == j, self.C * cw[j], self.C))
                        for j in range(len(present))]
        coef, icpt = [], []
        for yy, cc in problems:
            w, b, _ = svm_solver.solve(rows, yy, cc)
            coef.append(w)
            icpt.append(b)
        self._set_boundary(a, np.array(coef), np.array(icpt), present)

    def _set_boundary(self, a: str, coef: np.ndarray, intercept: np.ndarray, present: np.ndarray) -> None:
        """Store a boundary fitted on standardized latents (coef [K, D], intercept [K]) in latent units."""
        w = coef / self.scale_[None, :]             # decision in original coordinates: w.x + c
        c = intercept - coef @ (self.mean_ / self.scale_)
        norm = np.linalg.norm(w, axis=1)
        if np.any(norm == 0):
            raise ValueError(f"attribute {a!r}: the SVM found no direction (all weights zero); the labels do not "
                             f"depend linearly on the latent at this regularization (try a larger C)")
        self.normals_[a] = w / norm[:, None]
        self.offsets_[a] = c / norm
        self.present_[a] = present

    def _features(self, a: str, X: np.ndarray) -> np.ndarray:
        """Signed distances [N, K] of latents to attribute `a`'s boundaries."""
        return np.asarray(X, np.float64) @ self.normals_[a].T + self.offsets_[a]

    def _svm_predict(self, a: str, feats: np.ndarray) -> np.ndarray:
        present = self.present_[a]
        if feats.shape[1] == 1:
            return np.where(feats[:, 0] > 0, present[1], present[0])
        return present[np.argmax(feats, axis=1)]

    def _fit_cal(self, a: str, feats: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        k = len(self.classes_[a])
        if self.calibration == "isotonic":
            return {"kind": np.array("isotonic"), **_fit_isotonic_calibrator(feats, y, self.present_[a])}
        return {"kind": np.array("logistic"), **_fit_logistic_calibrator(feats, y, k)}

    def _apply_cal(self, a: str, cal: Mapping[str, np.ndarray], feats: np.ndarray) -> np.ndarray:
        kind = str(cal["kind"])
        if kind == "logistic":
            return _apply_logistic_calibrator(cal, feats)
        if kind == "isotonic":
            return _apply_isotonic_calibrator(cal, feats, self.present_[a], len(self.classes_[a]))
        raise ValueError(f"unknown calibrator {kind!r}")

    # -- prediction ---------------------------------------------------------------------------------
    def _check_latents(self, latents) -> np.ndarray:
        self._check_fitted()
        X = latents.detach().cpu().numpy() if hasattr(latents, "detach") else np.asarray(latents)
        if X.ndim != 2 or X.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"latents must have shape [N, {self.mean_.shape[0]}], got {X.shape}")
        return X.astype(np.float64, copy=False)

    def _check_fitted(self) -> None:
        if not hasattr(self, "normals_"):
            raise RuntimeError("this BoundarySet is not fitted yet; call fit(probes) or BoundarySet.load(path)")

    def _attr(self, a: str) -> str:
        self._check_fitted()
        if a not in self.normals_:
            raise KeyError(f"no boundary for attribute {a!r}; fitted attributes are {self.attributes_}")
        return a

    def decision_function(self, latents) -> dict[str, np.ndarray]:
        """Signed distances to the boundaries (latent units).

        Args:
            latents: float [N, D] (numpy or torch).

        Returns:
            attribute -> float64 [N] for binary attributes (positive = second class), [N, C] for
            multi-class ones (one-vs-rest, one column per class; absent classes are -inf).
        """
        X = self._check_latents(latents)
        out = {}
        for a in self.attributes_:
            f = self._features(a, X)
            if f.shape[1] == 1:
                out[a] = f[:, 0]
            else:
                full = np.full((len(X), len(self.classes_[a])), -np.inf)
                full[:, self.present_[a]] = f
                out[a] = full
        return out

    def predict_proba(self, latents) -> dict[str, np.ndarray]:
        """Calibrated P(class | latent) per attribute: attribute -> float64 [N, C] (rows sum to 1)."""
        X = self._check_latents(latents)
        return {a: self._proba(a, X) for a in self.attributes_}

    def _proba(self, a: str, X: np.ndarray) -> np.ndarray:
        return self._apply_cal(a, self.calibrators_[a], self._features(a, X))

    def predict(self, latents) -> dict[str, np.ndarray]:
        """Most probable class index per attribute: attribute -> int64 [N]."""
        return {a: p.argmax(axis=1).astype(np.int64) for a, p in self.predict_proba(latents).items()}

    # -- geometry -----------------------------------------------------------------------------------
    def normal(self, attr: str, cls: str | None = None) -> np.ndarray:
        """Unit normal [D] of `attr` (binary: toward its second class; multi-class: of class `cls` vs rest)."""
        a = self._attr(attr)
        n = self.normals_[a]
        if n.shape[0] == 1:
            if cls is not None:
                j = self.present_[a][1]
                if cls == self.classes_[a][j]:
                    return n[0].copy()
                if cls == self.classes_[a][self.present_[a][0]]:
                    return -n[0]
                raise KeyError(f"class {cls!r} of {a!r} has no boundary; classes are {self.classes_[a]}")
            return n[0].copy()
        if cls is None:
            raise ValueError(f"attribute {a!r} has {n.shape[0]} classes; say which normal with cls= "
                             f"(one of {[self.classes_[a][j] for j in self.present_[a]]})")
        try:
            j = [self.classes_[a][i] for i in self.present_[a]].index(cls)
        except ValueError:
            raise KeyError(f"class {cls!r} of {a!r} has no boundary; classes with one are "
                           f"{[self.classes_[a][i] for i in self.present_[a]]}") from None
        return n[j].copy()

    def conditional(self, attr: str, keep: Sequence[str] | str, cls: str | None = None) -> np.ndarray:
        """Normal of `attr` projected orthogonal to the normals of the attributes in `keep`.

        Moving a latent along the returned direction changes `attr`'s signed distance while leaving
        the signed distances of the kept attributes unchanged (Gram-Schmidt on their normals; all
        one-vs-rest normals of a multi-class kept attribute are used).

        Args:
            attr: attribute to edit.
            keep: attribute name(s) whose boundaries must stay fixed.
            cls:  class of a multi-class `attr` (see :meth:`normal`).

        Returns:
            float64 [D] unit vector.
        """
        keep = [keep] if isinstance(keep, str) else list(keep)
        n = self.normal(attr, cls)
        others = []
        for k in keep:
            if k == attr:
                raise ValueError(f"cannot keep {attr!r} fixed while editing it")
            others.extend(self.normals_[self._attr(k)])
        basis: list[np.ndarray] = []
        for v in others:  # Gram-Schmidt (twice for numerical safety)
            u = v.astype(np.float64).copy()
            for _ in range(2):
                for e in basis:
                    u -= (u @ e) * e
            norm = np.linalg.norm(u)
            if norm > 1e-10:
                basis.append(u / norm)
        for _ in range(2):
            for e in basis:
                n = n - (n @ e) * e
        norm = np.linalg.norm(n)
        if norm < 1e-8:
            raise ValueError(f"the normal of {attr!r} lies in the span of {keep}'s normals; no direction edits it "
                             f"while keeping them fixed")
        return n / norm

    # -- files --------------------------------------------------------------------------------------
    def to_arrays(self, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Plain arrays and JSON metadata describing the fitted set (used by :meth:`save`)."""
        self._check_fitted()
        arrays = {f"{prefix}mean": self.mean_, f"{prefix}scale": self.scale_}
        cal_kinds = {}
        for a in self.attributes_:
            arrays[f"{prefix}{a}/normals"] = self.normals_[a]
            arrays[f"{prefix}{a}/offsets"] = self.offsets_[a]
            arrays[f"{prefix}{a}/present"] = self.present_[a].astype(np.int64)
            cal = self.calibrators_[a]
            cal_kinds[a] = str(cal["kind"])
            for key, v in cal.items():
                if key != "kind":
                    arrays[f"{prefix}{a}/cal/{key}"] = np.asarray(v, np.float64)
        meta = dict(self.meta_, format=FORMAT, format_version=FORMAT_VERSION, attributes=self.attributes_,
                    classes={a: list(c) for a, c in self.classes_.items()}, report=self.report_,
                    calibrators=cal_kinds)
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], prefix: str = "") -> "BoundarySet":
        """Inverse of :meth:`to_arrays`."""
        s = meta["settings"]
        self = cls(C=s["C"], class_weight=s["class_weight"], holdout=s["holdout"], calibration=s["calibration"],
                   seed=s["seed"], solver=s.get("solver", "svm"))
        self.attributes_ = list(meta["attributes"])
        self.classes_ = {a: tuple(meta["classes"][a]) for a in self.attributes_}
        self.mean_ = np.asarray(arrays[f"{prefix}mean"], np.float64)
        self.scale_ = np.asarray(arrays[f"{prefix}scale"], np.float64)
        self.normals_, self.offsets_, self.present_, self.calibrators_ = {}, {}, {}, {}
        for a in self.attributes_:
            self.normals_[a] = np.asarray(arrays[f"{prefix}{a}/normals"], np.float64)
            self.offsets_[a] = np.asarray(arrays[f"{prefix}{a}/offsets"], np.float64)
            self.present_[a] = np.asarray(arrays[f"{prefix}{a}/present"], np.int64)
            cal: dict[str, Any] = {"kind": np.array(meta["calibrators"][a])}
            head = f"{prefix}{a}/cal/"
            for key in arrays:
                if key.startswith(head):
                    cal[key[len(head):]] = np.asarray(arrays[key], np.float64)
            self.calibrators_[a] = cal
        self.report_ = dict(meta.get("report", {}))
        self.meta_ = {k: v for k, v in meta.items()
                      if k not in ("format", "format_version", "attributes", "classes", "report", "calibrators")}
        return self

    def save(self, path: str | Path) -> None:
        """Write the boundaries to `path` (``.npz``, no pickles) atomically, with their metadata
        (generator id and latent space, labeler ids, probe count, accuracy, calibration error, versions)."""
        arrays, meta = self.to_arrays()
        write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> "BoundarySet":
        """Read a file written by :meth:`save` (``allow_pickle=False``). Raises :class:`BoundaryFileError`."""
        arrays, meta = read_npz(path, FORMAT, FORMAT_VERSION, "boundary", BoundaryFileError)
        try:
            return cls.from_arrays(arrays, meta)
        except (KeyError, TypeError, ValueError) as err:
            raise BoundaryFileError(f"{path} is an incomplete boundary file: {type(err).__name__}: {err}") from err

    def __repr__(self) -> str:
        if not hasattr(self, "normals_"):
            return f"BoundarySet(C={self.C}, calibration={self.calibration!r}, unfitted)"
        acc = {a: round(r["accuracy"], 3) for a, r in self.report_.items()}
        return f"BoundarySet(attributes={self.attributes_}, heldout_accuracy={acc})"


def _check_attributes(probes, attributes) -> list[str]:
    for field in ("latents", "probs", "classes", "labels", "meta"):
        if not hasattr(probes, field):
            raise TypeError(f"expected a ProbeSet (latents, probs, classes, labels, meta), got {type(probes).__name__}")
    have = list(probes.classes)
    if attributes is None:
        attributes = have
    elif isinstance(attributes, str):
        attributes = [attributes]
    attributes = list(attributes)
    if not attributes:
        raise ValueError("no attributes to fit")
    unknown = [a for a in attributes if a not in probes.classes]
    if unknown:
        raise ValueError(f"attributes {unknown} are not in the probe set; it has {have}")
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"attributes must be distinct, got {attributes}")
    return attributes
