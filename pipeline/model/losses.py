"""Depth losses, all masked by valid ground truth (gt > 0): pixels without a
measurement never contribute. Inputs are N x H x W x 1 metres; pred must be > 0
(the depth head guarantees it)."""

from __future__ import annotations

import tensorflow as tf

from pipeline.core.config import LossConfig

_EPS = 1e-6


def _mask_and_count(gt):
    mask = tf.cast(gt > 0, tf.float32)
    count = tf.reduce_sum(mask, axis=[1, 2, 3])
    return mask, count


def _safe_log(x):
    return tf.math.log(tf.maximum(x, _EPS))


def silog_loss(gt, pred, *, lam: float = 0.85):
    """Scale-invariant log loss (Eigen et al.), per image then averaged.

    sqrt(mean(d^2) - lam * mean(d)^2) with d = ln pred - ln gt over valid pixels;
    lam = 1 makes it fully invariant to a global scale of pred.
    """
    mask, count = _mask_and_count(gt)
    d = (_safe_log(pred) - _safe_log(gt)) * mask
    n = tf.maximum(count, 1.0)
    mean_d = tf.reduce_sum(d, axis=[1, 2, 3]) / n
    mean_d2 = tf.reduce_sum(d * d, axis=[1, 2, 3]) / n
    per_image = tf.sqrt(tf.maximum(mean_d2 - lam * mean_d * mean_d, 0.0) + _EPS)
    return _mean_over_valid_images(per_image, count)


def gradient_loss(gt, pred, *, scales: int = 3):
    """Multi-scale gradient matching on log depth (MiDaS-style): penalises wrong edges,
    invariant to a global scale (a constant log offset has no gradient). A difference
    counts only where both neighbouring pixels are valid."""
    mask, _ = _mask_and_count(gt)
    r = (_safe_log(pred) - _safe_log(gt)) * mask
    total = 0.0
    for s in range(scales):
        if s:
            # Strided subsampling keeps masks exact (pooling would blend valid and invalid).
            r, mask = r[:, ::2, ::2, :], mask[:, ::2, ::2, :]
        mx = mask[:, :, 1:, :] * mask[:, :, :-1, :]
        my = mask[:, 1:, :, :] * mask[:, :-1, :, :]
        gx = tf.abs(r[:, :, 1:, :] - r[:, :, :-1, :]) * mx
        gy = tf.abs(r[:, 1:, :, :] - r[:, :-1, :, :]) * my
        n = tf.reduce_sum(mx, axis=[1, 2, 3]) + tf.reduce_sum(my, axis=[1, 2, 3])
        per_image = (
            tf.reduce_sum(gx, axis=[1, 2, 3]) + tf.reduce_sum(gy, axis=[1, 2, 3])
        ) / tf.maximum(n, 1.0)
        total += _mean_over_valid_images(per_image, n)
    return total / scales


def l1_loss(gt, pred):
    mask, count = _mask_and_count(gt)
    per_image = tf.reduce_sum(tf.abs(pred - gt) * mask, axis=[1, 2, 3]) / tf.maximum(count, 1.0)
    return _mean_over_valid_images(per_image, count)


def berhu_loss(gt, pred):
    """Reverse Huber (Laina et al.): L1 for small errors, scaled L2 above c = 0.2 * max error."""
    mask, count = _mask_and_count(gt)
    err = tf.abs(pred - gt) * mask
    c = tf.maximum(0.2 * tf.reduce_max(err, axis=[1, 2, 3], keepdims=True), _EPS)
    per_pixel = tf.where(err <= c, err, (err * err + c * c) / (2.0 * c)) * mask
    per_image = tf.reduce_sum(per_pixel, axis=[1, 2, 3]) / tf.maximum(count, 1.0)
    return _mean_over_valid_images(per_image, count)


def rmse_loss(gt, pred):
    """Root mean squared error over valid pixels, per image then averaged: the organizers'
    baseline loss (theirs in mm; in metres here like the other terms, which Adam, being
    invariant to the scale of the loss, trains the same way)."""
    mask, count = _mask_and_count(gt)
    err = (pred - gt) * mask
    per_image = tf.sqrt(tf.reduce_sum(err * err, axis=[1, 2, 3]) / tf.maximum(count, 1.0) + _EPS)
    return _mean_over_valid_images(per_image, count)


def _mean_over_valid_images(per_image, count):
    """Images without any valid pixel get weight 0 instead of a 0-loss vote."""
    has = tf.cast(count > 0, tf.float32)
    return tf.reduce_sum(per_image * has) / tf.maximum(tf.reduce_sum(has), 1.0)


def make_loss(cfg: LossConfig, *, fill_invalid: bool = False):
    """The weighted sum named in params, as a Keras loss function (y_true, y_pred).

    y_true is N x H x W x 1 ground truth, or N x H x W x 2 with the teacher's depth as the
    second channel (0 = no map): then distill_weight adds the scale-invariant log loss to
    the teacher over its pixels, distill_grad_weight the gradient matching to it (both blind
    to the map's scale, which is a median guess on unlabeled images), and fill_invalid lets
    the teacher's depth stand in where the ground truth has a hole. An image without ground
    truth (unlabeled) trains on the teacher alone: every ground-truth term gives it weight 0."""
    terms = [
        (cfg.silog_weight, lambda gt, pred: silog_loss(gt, pred, lam=cfg.silog_lambda)),
        (cfg.grad_weight, gradient_loss),
        (cfg.l1_weight, l1_loss),
        (cfg.berhu_weight, berhu_loss),
        (cfg.rmse_weight, rmse_loss),
    ]
    terms = [(w, fn) for w, fn in terms if w > 0]
    distill = cfg.distill_weight > 0 or cfg.distill_grad_weight > 0
    if not terms and not distill:
        raise ValueError("params: train.loss has no term with a positive weight")

    def depth_loss(y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)
        if y_true.shape[-1] != 2:  # ground truth alone: validation, or training without a teacher
            if not terms:  # distillation alone has nothing to say about ground truth
                return tf.zeros([])
            return tf.add_n([w * fn(y_true, y_pred) for w, fn in terms])
        gt, teacher = y_true[..., :1], y_true[..., 1:]
        if fill_invalid:
            gt = tf.where(gt > 0, gt, teacher)
        parts = [w * fn(gt, y_pred) for w, fn in terms]
        if cfg.distill_weight > 0:
            parts.append(cfg.distill_weight * silog_loss(teacher, y_pred, lam=cfg.silog_lambda))
        if cfg.distill_grad_weight > 0:
            parts.append(cfg.distill_grad_weight * gradient_loss(teacher, y_pred))
        return tf.add_n(parts)

    return depth_loss
