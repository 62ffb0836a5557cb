"""PlasticRNNCell: a Keras RNN cell whose recurrent weights change within an episode."""

import sys

import keras
from keras import ops as K

from hebbkeras import ops, rules

PACKAGE = "hebbkeras"


@keras.saving.register_keras_serializable(package=PACKAGE)
class EtaRange(keras.constraints.Constraint):
    """Keeps a trainable plasticity rate inside (0, 1], where eq. (2) is a decay."""

    def __init__(self, min_value=1e-6, max_value=1.0):
        self.min_value = min_value
        self.max_value = max_value

    def __call__(self, w):
        return K.clip(w, self.min_value, self.max_value)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


class TraceSize(tuple):
    """The trace's entry of `PlasticRNNCell.state_size`: the tuple `(units, units)`.

    `keras.layers.RNN` infers its symbolic output shapes (on `keras.Input`s) by
    reading each entry of a tuple state size as one vector state, so with
    `return_state=True` it would describe the `(batch, units, units)` trace as
    two `(batch, units)` tensors, and the model would fail later with
    `AttributeError: 'list' object has no attribute 'shape'` or "not
    connected". That inference is the only place a tuple state size is
    iterated, so iterating this one there raises a clear error instead.
    `PlasticRNN` describes its states itself and never gets here.
    """

    def __iter__(self):
        frame = sys._getframe(1)
        for _ in range(3):  # the caller, or (Python < 3.12) a comprehension's caller
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if (
                isinstance(owner, keras.layers.RNN)
                and getattr(owner, "return_state", False)
                and type(owner).compute_output_shape is keras.layers.RNN.compute_output_shape
            ):
                n = self[0]
                raise ValueError(
                    f"keras.layers.RNN(PlasticRNNCell({n}), return_state=True) cannot "
                    f"describe the Hebbian trace state, a (batch, {n}, {n}) matrix: Keras's "
                    "RNN shape inference takes every state to be a (batch, size) vector. "
                    f"Use hebbkeras.PlasticRNN({n}, ..., return_state=True), which returns "
                    f"y (batch, {n}) and hebb (batch, {n}, {n}) as its states."
                )
            frame = frame.f_back
        return super().__iter__()


@keras.saving.register_keras_serializable(package=PACKAGE)
class PlasticRNNCell(keras.layers.Layer):
    """A recurrent cell with Hebbian plastic connections (differentiable plasticity).

    Each step computes, for neurons `y` (batch, units) and a per-episode Hebbian
    trace `hebb` (batch, units, units) that starts at zero:

        pre_t      = y_{t-1} @ (w + alpha * hebb_t)
        y_t        = tanh(pre_t + drive_t)      (clamped neurons: y_t = x_t)
        hebb_{t+1} = (1 - eta) * hebb_t + eta * outer(y_{t-1}, y_t)

    `w` and `alpha` are learned by gradient descent across episodes; `hebb`
    grows within an episode, so the network stores what it sees. With
    `rule="oja"` the trace follows Oja's rule,
    `hebb += eta * y_t * (y_{t-1} - y_t * hebb)`.

    With `modulation` (Backpropamine, Miconi et al. 2019; `hebbkeras.rules.modulated`)
    the network gates its trace with a learned signal, clipped to `c = trace_clip`:

        M_t        = tanh(y_t @ modulator_kernel + modulator_bias)      (batch, 1)
                     (* modulator_fanout, (batch, units), with `modulation_fanout`)
        simple:      hebb_{t+1} = clip(hebb_t + M_t * outer(y_{t-1}, y_t), -c, c)
        retroactive: hebb_{t+1} = clip(hebb_t + M_t * E_t, -c, c)
                     E_{t+1}    = (1 - eta) * E_t + eta * outer(y_{t-1}, y_t)

    (`eta` is the eligibility trace `E`'s rate; "simple" does not use it.)

    Args:
        units: number of neurons `N`.
        input_mode: how the input `x_t` reaches the neurons.
            `"clamp"` (the paper): a neuron whose input is non-zero takes that
            value; input width must equal `units`.
            `"add"` (the original code): `drive_t = input_scale * x_t`; input
            width must equal `units`.
            `"dense"`: `drive_t = x_t @ kernel + bias`, a learned input kernel of
            any input width, so the cell composes like any Keras RNN cell.
        input_scale: the factor of `"add"` mode (20 in the original code).
        eta: the plasticity rate, in (0, 1]; 0.01 in the paper.
        trainable_eta: learn `eta` by gradient descent (the reference code does).
        plasticity: `"per_connection"` (one `alpha` per connection),
            `"shared"` (one scalar `alpha` for all connections, a Hopfield-like
            network) or `"none"` (no `alpha`, no trace: a plain RNN baseline).
        rule: `"hebb"` (eq. 2) or `"oja"`.
        modulation: `"none"` (the rule above), `"simple"` or `"retroactive"`
            (neuromodulated: replaces `rule`, which must stay `"hebb"`; adds the
            weights `modulator_kernel` (units, 1) and `modulator_bias` (1,), and
            for "retroactive" the state `E`). Needs a plastic layer.
        trace_clip: `c`, the bound of a modulated trace (1 in the original code).
        modulation_fanout: spread `M_t` over the receiving neurons by a learned
            vector `modulator_fanout` (units,) (ones at first): `M_t` becomes
            `(batch, units)` and multiplies column `j` of the update by
            `M_t[j]`. Off by default. (The original code's fan-out, for its
            simple mode, is a `Linear(1, units)`, with a bias as well.)
        w_initializer, alpha_initializer: initializers of `w` and `alpha`
            (default: normal with stddev 0.01, as in the paper's code).
        kernel_initializer, bias_initializer: for the input kernel of
            `"dense"` mode.

    Call arguments:
        inputs: `(batch, input_width)`, the input of one step.
        states: `[y, hebb]`: `(batch, units)` and `(batch, units, units)`; just
            `[y]` when `plasticity="none"`; `[y, hebb, E]` (E as hebb) with
            `modulation="retroactive"`.
        training: unused; accepted for Keras.

    Example:

    >>> cell = PlasticRNNCell(16, input_mode="dense")
    >>> layer = keras.layers.RNN(cell, return_state=True)
    >>> y, y_state, hebb = layer(np.ones((2, 5, 3), "float32"))
    >>> hebb.shape
    TensorShape([2, 16, 16])
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
        modulation="none",
        trace_clip=1.0,
        modulation_fanout=False,
        w_initializer=None,
        alpha_initializer=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(units) != units or units < 1:
            raise ValueError(f"units={units} must be a positive integer.")
        ops.check_option("input_mode", input_mode, ops.INPUT_MODES)
        ops.check_option("plasticity", plasticity, ops.PLASTICITY)
        rules.plain(rule, type(self).__name__)
        ops.check_option("modulation", modulation, ("none",) + rules.names(plain=False))
        if modulation != "none" and (plasticity == "none" or rule != "hebb"):
            raise ValueError(
                f"modulation={modulation!r} gates the Hebbian trace of a plastic layer "
                f"(Backpropamine): it needs plasticity='per_connection' or 'shared' and "
                f"rule='hebb' (it replaces the rule); got plasticity={plasticity!r}, "
                f"rule={rule!r}.")
        if modulation_fanout and modulation == "none":
            raise ValueError("modulation_fanout=True spreads the modulation M_t over the "
                             "neurons: it needs modulation='simple' or 'retroactive'.")
        if not float(trace_clip) > 0:
            raise ValueError(f"trace_clip={trace_clip} must be positive: the modulated trace "
                             "is clipped to [-trace_clip, trace_clip] (1 in the original code).")
        ops.check_eta(eta)
        self.units = int(units)
        self.input_mode = input_mode
        self.input_scale = float(input_scale)
        self.eta = float(eta)
        self.trainable_eta = bool(trainable_eta)
        self.plasticity = plasticity
        self.rule = rule
        self.modulation = modulation
        self.trace_clip = float(trace_clip)
        self.modulation_fanout = bool(modulation_fanout)
        default = {"class_name": "RandomNormal", "config": {"stddev": 0.01}}
        self.w_initializer = keras.initializers.get(w_initializer or default)
        self.alpha_initializer = keras.initializers.get(alpha_initializer or default)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.output_size = self.units
        if self.plastic:
            self.state_size = [self.units] + [
                TraceSize((self.units, self.units)) for _ in self.plasticity_rule.traces]
        else:
            self.state_size = [self.units]

    @property
    def plastic(self):
        return self.plasticity != "none"

    @property
    def plasticity_rule(self):
        """The rule object that updates the trace: the modulation's, else `rule`'s."""
        return rules.get(self.rule if self.modulation == "none" else self.modulation)

    @property
    def modulator(self):
        """The weights of `M_t`: `(modulator_kernel, modulator_bias[, modulator_fanout])`."""
        return (self.modulator_kernel, self.modulator_bias) + (
            (self.modulator_fanout,) if self.modulation_fanout else ())

    @property
    def state_names(self):
        """The states' names: `y`, then the rule's traces (`hebb`, `E`) if plastic."""
        return ("y",) + (self.plasticity_rule.traces if self.plastic else ())

    def check_input_width(self, width):
        """Raises a ValueError unless `width` (the last input axis) suits this cell:
        `units` in "clamp" and "add" mode, the kernel's rows once built in "dense" mode."""
        if width is None:
            return
        if self.input_mode in ("clamp", "add") and width != self.units:
            raise ValueError(
                f"input_mode={self.input_mode!r} feeds input i to neuron i, so the "
                f"input width must equal units={self.units}; got width {width}. "
                'Use input_mode="dense" for a learned input kernel of any width.'
            )
        kernel = getattr(self, "kernel", None)
        if kernel is not None and width != kernel.shape[0]:
            raise ValueError(
                f"This layer was built for input width {kernel.shape[0]} (its "
                f'input_mode="dense" kernel is ({kernel.shape[0]}, {self.units})); got '
                f"width {width}. Use a new layer for inputs of another width."
            )

    def build(self, input_shape):
        width = input_shape[-1]
        self.check_input_width(width)
        n = self.units
        self.w = self.add_weight(shape=(n, n), initializer=self.w_initializer, name="w")
        self.alpha = None
        self.eta_weight = None
        if self.plastic:
            shape = (n, n) if self.plasticity == "per_connection" else ()
            self.alpha = self.add_weight(
                shape=shape, initializer=self.alpha_initializer, name="alpha"
            )
            self.eta_weight = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(self.eta),
                trainable=self.trainable_eta,
                constraint=EtaRange(),
                name="eta",
            )
        self.modulator_kernel = self.modulator_bias = self.modulator_fanout = None
        if self.modulation != "none":
            self.modulator_kernel = self.add_weight(
                shape=(n, 1), initializer="glorot_uniform", name="modulator_kernel")
            self.modulator_bias = self.add_weight(
                shape=(1,), initializer="zeros", name="modulator_bias")
        if self.modulation_fanout:
            self.modulator_fanout = self.add_weight(
                shape=(n,), initializer="ones", name="modulator_fanout")
        self.kernel = self.bias = None
        if self.input_mode == "dense":
            self.kernel = self.add_weight(
                shape=(width, n), initializer=self.kernel_initializer, name="kernel"
            )
            self.bias = self.add_weight(
                shape=(n,), initializer=self.bias_initializer, name="bias"
            )

    def input_terms(self, inputs):
        """`(drive, clamp)` of `ops.activate` for this cell's input mode.

        Works on one step `(batch, width)` or a whole sequence `(batch, time, width)`.
        """
        if self.input_mode == "clamp":
            return None, inputs
        if self.input_mode == "add":
            return self.input_scale * inputs, None
        return K.matmul(inputs, self.kernel) + self.bias, None

    def call(self, inputs, states, training=False):
        self.check_input_width(inputs.shape[-1])
        drive, clamp = self.input_terms(inputs)
        y_prev = states[0]
        eta = self.eta_weight if self.plastic else None
        if self.modulation != "none":
            y, traces = ops.modulated_step(
                y_prev, states[1:], self.w, self.alpha, eta,
                self.modulator, self.trace_clip,
                self.plasticity_rule, drive, clamp)
            return y, [y, *traces]
        hebb = states[1] if self.plastic else None
        y, hebb = ops.step(y_prev, hebb, self.w, self.alpha, eta, drive, clamp, self.rule)
        return y, ([y, hebb] if self.plastic else [y])

    def get_initial_state(self, batch_size=None):
        n = self.units
        y = K.zeros((batch_size, n), dtype=self.compute_dtype)
        return [y] + [K.zeros((batch_size, n, n), dtype=self.compute_dtype)
                      for _ in self.state_names[1:]]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "input_mode": self.input_mode,
                "input_scale": self.input_scale,
                "eta": self.eta,
                "trainable_eta": self.trainable_eta,
                "plasticity": self.plasticity,
                "rule": self.rule,
                "modulation": self.modulation,
                "trace_clip": self.trace_clip,
                "modulation_fanout": self.modulation_fanout,
                "w_initializer": keras.initializers.serialize(self.w_initializer),
                "alpha_initializer": keras.initializers.serialize(self.alpha_initializer),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
