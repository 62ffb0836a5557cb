"""PlasticRNN: the whole-episode plastic recurrent layer users reach for first."""

import keras

from hebbkeras.cell import PACKAGE, PlasticRNNCell

_CELL_ARGS = (
    "units",
    "input_mode",
    "input_scale",
    "eta",
    "trainable_eta",
    "plasticity",
    "rule",
    "w_initializer",
    "alpha_initializer",
    "kernel_initializer",
    "bias_initializer",
)
_RNN_ARGS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll")


@keras.saving.register_keras_serializable(package=PACKAGE)
class PlasticRNN(keras.layers.RNN):
    """A recurrent layer with Hebbian plastic connections, run over whole episodes.

    Runs `PlasticRNNCell` over the time axis; the Hebbian trace starts at zero
    for every sequence (episode) unless an initial state is given. See
    `PlasticRNNCell` for the equations and the cell arguments.

    Args:
        units, input_mode, input_scale, eta, trainable_eta, plasticity, rule,
        w_initializer, alpha_initializer, kernel_initializer, bias_initializer:
            as in `PlasticRNNCell`.
        return_sequences: return `y` at every step `(batch, time, units)`
            instead of the last step `(batch, units)`.
        return_state: also return the final state, `y` `(batch, units)` and
            `hebb` `(batch, units, units)` (just `y` when `plasticity="none"`).
        go_backwards, stateful, unroll: as in `keras.layers.RNN`.

    Call arguments:
        sequences: `(batch, time, input_width)`.
        initial_state: optional `[y, hebb]`; zeros by default.
        mask, training: as in `keras.layers.RNN`.

    Example:

    >>> inputs = keras.Input((200, 8))
    >>> x = keras.layers.Dense(32)(inputs)
    >>> x = PlasticRNN(64, input_mode="dense")(x)
    >>> outputs = keras.layers.Dense(4)(x)
    >>> model = keras.Model(inputs, outputs)
    """

    def __init__(
        self,
        units,
        input_mode="clamp",
        input_scale=20.0,
        eta=0.01,
        trainable_eta=False,
        plasticity="per_connection",
        rule="hebb",
        w_initializer=None,
        alpha_initializer=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        stateful=False,
        unroll=False,
        **kwargs,
    ):
        cell = PlasticRNNCell(
            units,
            input_mode=input_mode,
            input_scale=input_scale,
            eta=eta,
            trainable_eta=trainable_eta,
            plasticity=plasticity,
            rule=rule,
            w_initializer=w_initializer,
            alpha_initializer=alpha_initializer,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            dtype=kwargs.get("dtype"),
            name="plastic_rnn_cell",
        )
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            stateful=stateful,
            unroll=unroll,
            **kwargs,
        )

    # The cell's hyperparameters and weights, reachable from the layer.
    units = property(lambda self: self.cell.units)
    input_mode = property(lambda self: self.cell.input_mode)
    plasticity = property(lambda self: self.cell.plasticity)
    rule = property(lambda self: self.cell.rule)
    w = property(lambda self: self.cell.w)
    alpha = property(lambda self: self.cell.alpha)
    eta = property(lambda self: self.cell.eta_weight)

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        # keras.layers.RNN can only describe vector states; the trace is a matrix.
        batch, time, n = sequences_shape[0], sequences_shape[1], self.cell.units
        output = (batch, time, n) if self.return_sequences else (batch, n)
        if not self.return_state:
            return output
        states = [(batch, n)] + ([(batch, n, n)] if self.cell.plastic else [])
        return output, *states

    def get_config(self):
        cell_config = self.cell.get_config()
        config = {k: cell_config[k] for k in _CELL_ARGS}
        base = super().get_config()
        base.pop("cell", None)
        config.update({k: base.pop(k) for k in _RNN_ARGS})
        config.update({k: v for k, v in base.items() if k != "zero_output_for_mask"})
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
