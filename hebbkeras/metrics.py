"""Losses and metrics of the pattern-completion tasks.

The network's output holds every neuron (the pattern, then any extra units such
as the bias neuron); targets hold only the pattern. Both functions compare the
first `target_width` units of the output with the target.
"""

import keras
from keras import ops

from hebbkeras.layers.plastic_rnn_cell import PACKAGE


def _pattern_part(y_true, y_pred):
    width = y_true.shape[-1]
    if width is None or y_pred.shape[-1] is None or width > y_pred.shape[-1]:
        raise ValueError(
            f"The target width ({width}) must be known and at most the output "
            f"width ({y_pred.shape[-1]})."
        )
    return ops.cast(y_true, y_pred.dtype), y_pred[..., :width]


@keras.saving.register_keras_serializable(package=PACKAGE)
def summed_squared_error(y_true, y_pred):
    """Squared error summed over the pattern's units: the paper's loss, per episode."""
    y_true, y_pred = _pattern_part(y_true, y_pred)
    return ops.sum(ops.square(y_pred - y_true), axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
def bit_errors(y_true, y_pred):
    """Fraction of the pattern's bits whose sign differs from the target's."""
    y_true, y_pred = _pattern_part(y_true, y_pred)
    wrong = ops.not_equal(ops.sign(y_pred), ops.sign(y_true))
    return ops.mean(ops.cast(wrong, y_pred.dtype), axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BitErrorRate(keras.metrics.MeanMetricWrapper):
    """Mean fraction of pattern bits with the wrong sign (the paper's error measure).

    Counted over the whole pattern, as in the paper; in clamp mode the
    unerased half is always right, so this is half the error on erased bits.
    """

    def __init__(self, name="bit_error", dtype=None):
        super().__init__(bit_errors, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}
