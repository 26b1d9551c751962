"""Float64 NumPy references written from METHODS.md, independent of the library."""

from __future__ import annotations

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def tempered_softmax(f, tau) -> np.ndarray:
    tau = np.asarray(tau, dtype=np.float64)
    if tau.ndim == 1:
        tau = tau[:, None]
    return softmax(np.asarray(f, np.float64) / tau)


def ats(f, y, tau1, tau2) -> np.ndarray:
    """t_y = exp(f_y/tau1)/Z, t_c = exp(f_c/tau2)/Z, computed sample by sample."""
    f = np.asarray(f, np.float64)
    b = f.shape[0]
    tau1 = np.broadcast_to(np.asarray(tau1, np.float64), (b,))
    tau2 = np.broadcast_to(np.asarray(tau2, np.float64), (b,))
    out = np.empty_like(f)
    for i in range(b):
        z = f[i] / tau2[i]
        z[y[i]] = f[i, y[i]] / tau1[i]
        out[i] = softmax(z)
    return out


def non_target_variance(p, y) -> np.ndarray:
    """Population variance of the C-1 non-target entries, sample by sample."""
    p = np.asarray(p, np.float64)
    return np.array([np.var(np.delete(p[i], y[i])) for i in range(p.shape[0])])


def isats_grid(lo: float, hi: float, k: int) -> np.ndarray:
    return np.exp(np.linspace(np.log(lo), np.log(hi), k))


def isats_brute_force(f, y, lo, hi, k):
    """Grid arg-max of v(q(x; tau)), one sample and one candidate at a time.

    Returns:
        (tau*, variance at each candidate [B, K]).
    """
    grid = isats_grid(lo, hi, k)
    f = np.asarray(f, np.float64)
    values = np.zeros((f.shape[0], k))
    for i in range(f.shape[0]):
        for j, tau in enumerate(grid):
            p = softmax(f[i] / tau)
            values[i, j] = np.var(np.delete(p, y[i]))
    return grid[np.argmax(values, axis=1)], values


def kl_kd(t, g, s, scaling: bool = True) -> np.ndarray:
    """s^2 * KL(t || softmax(g / s)) per sample."""
    t = np.asarray(t, np.float64)
    s = np.broadcast_to(np.asarray(s, np.float64), (t.shape[0],))
    log_q = log_softmax(np.asarray(g, np.float64) / s[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(t > 0, t * (np.log(np.where(t > 0, t, 1.0)) - log_q), 0.0)
    kl = term.sum(axis=-1)
    return kl * s**2 if scaling else kl


def cross_entropy(g, y) -> np.ndarray:
    return -log_softmax(g)[np.arange(len(y)), y]


def smoothed_cross_entropy(g, y, eps) -> np.ndarray:
    """Cross-entropy against the target (1 - eps) * onehot(y) + eps / C."""
    c = g.shape[-1]
    target = np.full(g.shape, eps / c)
    target[np.arange(len(y)), y] += 1.0 - eps
    return -(target * log_softmax(g)).sum(-1)


def regt(f, y, gamma, tau) -> np.ndarray:
    c = f.shape[-1]
    return cross_entropy(f, y) - gamma * (c - 1) * non_target_variance(tempered_softmax(f, tau), y)


def isats_target(f, y, lo, hi, k, ratio, fallback, keep_first=True):
    """ISATS teacher target from METHODS.md, sample by sample.

    Returns:
        (probs, tau2, tau1, fallback flags, cap flags).
    """
    f = np.asarray(f, np.float64)
    tau_star, _ = isats_brute_force(f, y, lo, hi, k)
    b = f.shape[0]
    tau1 = np.empty(b)
    tau2 = np.empty(b)
    fell = np.zeros(b)
    capped = np.zeros(b)
    for i in range(b):
        others = np.delete(f[i], y[i])
        if f[i, y[i]] >= others.max():
            tau2[i] = tau_star[i]
            tau1[i] = ratio * tau_star[i]
            m = others.max()
            bound = tau2[i] * f[i, y[i]] / (m * 1.001)  # 0.1% margin, as documented
            if keep_first and m > 0 and tau1[i] > bound:
                tau1[i] = bound
                capped[i] = 1
        else:
            tau1[i] = tau2[i] = fallback
            fell[i] = 1
    return ats(f, y, tau1, tau2), tau2, tau1, fell, capped


def isats_margin_target(f, y, lo, hi, k, kappa, fallback, keep_first=True):
    """ISATS with tau1 from the teacher's margin (`target_margin=kappa`), sample by sample.

    Where the label is first and m = max_{c != y} f_c > 0, tau1 solves
    f_y / tau1 = (m + kappa (f_y - m)) / tau2; where m <= 0, tau1 = tau2;
    misclassified samples fall back to plain KD. The label's scaled logit is
    then kept at least 1.001 m / tau2 (the 0.1% margin) when `keep_first`.

    Returns:
        (probs, tau2, tau1, fallback flags, cap flags).
    """
    f = np.asarray(f, np.float64)
    tau_star, _ = isats_brute_force(f, y, lo, hi, k)
    b = f.shape[0]
    tau1, tau2 = np.empty(b), np.empty(b)
    fell, capped = np.zeros(b), np.zeros(b)
    for i in range(b):
        target = f[i, y[i]]
        m = np.delete(f[i], y[i]).max()
        if target < m:
            tau1[i] = tau2[i] = fallback
            fell[i] = 1
            continue
        tau2[i] = tau_star[i]
        tau1[i] = tau2[i]
        if m > 0:
            scaled_target = (m + kappa * (target - m)) / tau2[i]  # the label's f_y / tau1
            tau1[i] = target / scaled_target
            if keep_first and scaled_target < 1.001 * m / tau2[i]:
                tau1[i] = target / (1.001 * m / tau2[i])
                capped[i] = 1
    return ats(f, y, tau1, tau2), tau2, tau1, fell, capped


def fgcr(f, y, relations, weight, tau) -> np.ndarray:
    return (1 - weight) * tempered_softmax(f, tau) + weight * np.asarray(relations)[y]


def class_mean_relations(f, y, tau, num_classes) -> np.ndarray:
    p = tempered_softmax(f, tau)
    return np.stack([p[y == c].mean(axis=0) for c in range(num_classes)])


def cosine_relations(kernel, tau) -> np.ndarray:
    w = np.asarray(kernel, np.float64)
    c = w.shape[1]
    r = np.empty((c, c))
    for i in range(c):
        for j in range(c):
            r[i, j] = w[:, i] @ w[:, j] / (np.linalg.norm(w[:, i]) * np.linalg.norm(w[:, j]))
    return softmax(r / tau)


def dkd(f, g, y, tckd_weight, nckd_weight, tau, warmup=1.0) -> np.ndarray:
    """w T^2 (a TCKD + b NCKD): KL of [p_y, 1 - p_y] plus the renormalised non-target KL."""
    out = []
    for logits in (f, g):
        p = tempered_softmax(logits, tau)
        rows = np.arange(len(y))
        target = p[rows, y]
        rest = p[np.arange(p.shape[1]) != y[:, None]].reshape(len(y), -1)
        out.append(
            (np.stack([target, 1.0 - target], axis=1), rest / rest.sum(axis=1, keepdims=True))
        )
    (bt, nt), (bs, ns) = out
    tckd = np.sum(bt * np.log(bt / bs), axis=1)
    nckd = np.sum(nt * np.log(nt / ns), axis=1)
    return warmup * tau**2 * (tckd_weight * tckd + nckd_weight * nckd)


def soft_cross_entropy(g, targets) -> np.ndarray:
    """-sum_c y_c log softmax(g)_c per sample, for soft (or one-hot) label rows y."""
    return -(np.asarray(targets, np.float64) * log_softmax(g)).sum(axis=-1)


def soft_label_class(targets) -> np.ndarray:
    """The target class of a label row: its arg-max (the first one on a tie)."""
    return np.argmax(np.asarray(targets, np.float64), axis=-1)


def teacher_stand_in_labels(f) -> np.ndarray:
    """Unlabelled data: the teacher's top class stands in for the label."""
    return np.argmax(np.asarray(f, np.float64), axis=-1)


# ------------------------------------------------------------ token level (issue 16)
def standardize(z, ddof: int = 0, eps: float = 1e-7) -> np.ndarray:
    """Row z-scores `(z - mean) / (std + eps)`, population std for `ddof=0`."""
    z = np.asarray(z, np.float64)
    centred = z - z.mean(axis=-1, keepdims=True)
    std = np.sqrt((centred**2).sum(axis=-1, keepdims=True) / (z.shape[-1] - ddof))
    return centred / (std + eps)


def gradient_cosine(t, g, y, s) -> np.ndarray:
    """Cosine between softmax(g) - onehot(y) and softmax(g / s) - t, per sample (SCKD)."""
    g = np.asarray(g, np.float64)
    grad_ce = softmax(g) - np.eye(g.shape[-1])[y]
    grad_kd = tempered_softmax(g, s) - np.asarray(t, np.float64)
    norms = np.linalg.norm(grad_ce, axis=-1) * np.linalg.norm(grad_kd, axis=-1)
    return np.sum(grad_ce * grad_kd, axis=-1) / np.maximum(norms, 1e-300)


def token_rows(a) -> np.ndarray:
    """`[B, T, ...]` as `[B * T, ...]`: every token a row."""
    a = np.asarray(a)
    return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def token_mean(per_token, weights) -> float:
    """`sum(w * loss) / #{w != 0}` over `[B * T]` tokens; 0 when no token counts.

    Args:
        per_token: the loss of each counted token (`[#{w != 0}]`, in row order).
        weights: `[B, T]` token weights (sample weight times padding mask).
    """
    w = token_rows(np.asarray(weights, np.float64))
    kept = w[w != 0]
    if kept.size == 0:
        return 0.0
    return float(np.sum(kept * np.asarray(per_token, np.float64)) / kept.size)
