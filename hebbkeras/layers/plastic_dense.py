"""PlasticDense: a plastic fully connected layer run over a sequence (the Omniglot readout)."""

import keras
from keras import ops as K

from hebbkeras import ops, rules
from hebbkeras.layers.plastic_rnn_cell import PACKAGE, EtaRange


@keras.saving.register_keras_serializable(package=PACKAGE)
class PlasticDense(keras.layers.Layer):
    """A fully connected layer whose weights change within a sequence (episode).

    For inputs `x_t` `(batch, in)` and a Hebbian trace `hebb` `(batch, in,
    units)` that starts at zero for every sequence, each step computes

        y_t        = act(x_t @ (w + alpha * hebb_t) + b)
        hebb_{t+1} = (1 - eta) * hebb_t + eta * outer(x_t, y_t)              (rule="hebb")
        hebb_{t+1} = hebb_t + eta * y_t[j] * (x_t[i] - y_t[j] * hebb_t[i, j])  (rule="oja")

    The output uses the trace before the step's update (as `PlasticRNNCell`
    does); the update pairs the step's input with its output. With a teacher
    `u_t` `(batch, units)`:

        teacher_mode="add":   y_t = act(x_t @ (w + alpha * hebb_t) + b + teacher_scale * u_t)
        teacher_mode="clamp": y_t = u_t where u_t has a non-zero entry (the
                              whole row), act(...) where u_t is all zero.

    The Omniglot network (Miconi et al. 2018) is `activation="softmax"`,
    `rule="oja"`, `teacher_mode="add"`, `teacher_scale=1000` with one-hot labels
    on the support steps and zeros on the query step: the label sets the
    output, so the trace stores the pairing of embedding and label, and the
    query's output reads it back.

    Args:
        units: output width.
        activation: any Keras activation (default: linear).
        use_bias: add a learned bias `b` `(units,)`.
        eta: the plasticity rate, in (0, 1].
        trainable_eta: learn `eta` (kept in (0, 1] by `EtaRange`).
        plasticity: `"per_connection"` (`alpha` `(in, units)`), `"shared"` (one
            scalar `alpha`) or `"none"` (no `alpha`, no trace: a plain
            time-distributed dense layer, the non-plastic baseline).
        rule: `"hebb"` or `"oja"`.
        teacher_mode: None (no teaching input), `"add"` or `"clamp"`; with a
            mode the layer is called on `[inputs, teacher]`.
        teacher_scale: the factor of `"add"` mode (1000 in the Omniglot code).
        return_sequences: return every step `(batch, time, units)` instead of
            the last `(batch, units)`.
        return_state: also return the final trace `hebb_T` `(batch, in, units)`.
        w_initializer, alpha_initializer, bias_initializer: defaults are the
            Omniglot code's, `w ~ N(0, 0.01^2)` and `alpha ~ U(0, 0.01)`; bias zeros.
        use_fused: on the TensorFlow backend, run plastic sequences through
            `hebbkeras.kernels.dense_fused` (hand-written gradient, O(B * in * units)
            training memory instead of one trace per step, except for short
            sequences, whose traces it keeps up to 1 MiB per episode); otherwise, or with
            False, a `keras.ops.scan` over `ops.dense_step` (any backend). Both
            compute the same function. Inside an XLA-compiled function
            (`jit_compile=True`) the `keras.ops` path runs; with the fused
            path on, the layer reports `supports_jit=False` on TensorFlow, so
            `jit_compile="auto"` trains without XLA, on the fused path (on
            JAX and torch the layer supports jit).

    Call arguments:
        inputs: `(batch, time, in)`, or `[inputs, teacher]` with `teacher`
            `(batch, time, units)` when `teacher_mode` is set.
        training: unused; accepted for Keras.

    Example:

    >>> images = keras.Input((6, 28, 28, 1))
    >>> labels = keras.Input((6, 5))
    >>> x = keras.layers.TimeDistributed(keras.layers.Conv2D(8, 3, 2))(images)
    >>> x = keras.layers.TimeDistributed(keras.layers.Flatten())(x)
    >>> probs = PlasticDense(5, activation="softmax", rule="oja",
    ...                      teacher_mode="add", teacher_scale=1000.0)([x, labels])
    >>> model = keras.Model([images, labels], probs)  # (batch, 5): the query's probabilities

    Give `keras.Input` a fixed number of steps when a `TimeDistributed` layer
    feeds this one: with both batch and time unknown, Keras 3.15's
    `TimeDistributed` runs over as many steps as the batch has elements.
    PlasticDense itself takes any length.
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=False,
        eta=0.01,
        trainable_eta=False,
        plasticity="per_connection",
        rule="hebb",
        teacher_mode=None,
        teacher_scale=1000.0,
        return_sequences=False,
        return_state=False,
        w_initializer=None,
        alpha_initializer=None,
        bias_initializer="zeros",
        use_fused=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.supports_masking = True  # so that Keras hands over a mask, which compute_mask refuses
        if isinstance(units, bool) or int(units) != units or units < 1:
            raise ValueError(f"units={units} must be a positive integer.")
        ops.check_option("plasticity", plasticity, ops.PLASTICITY)
        rules.plain(rule, "PlasticDense")
        if teacher_mode is not None:
            ops.check_option("teacher_mode", teacher_mode, ops.TEACHER_MODES)
        ops.check_eta(eta)
        if return_state and plasticity == "none":
            raise ValueError(
                "return_state=True returns the Hebbian trace, and plasticity='none' has "
                "none; use return_state=False or a plastic layer."
            )
        self.units = int(units)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.eta = float(eta)
        self.trainable_eta = bool(trainable_eta)
        self.plasticity = plasticity
        self.rule = rule
        self.teacher_mode = teacher_mode
        self.teacher_scale = float(teacher_scale)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.w_initializer = keras.initializers.get(
            w_initializer or {"class_name": "RandomNormal", "config": {"stddev": 0.01}})
        self.alpha_initializer = keras.initializers.get(
            alpha_initializer
            or {"class_name": "RandomUniform", "config": {"minval": 0.0, "maxval": 0.01}})
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.use_fused = bool(use_fused)
        # As PlasticRNN: XLA cannot compile the fused path's loops, so say so,
        # and a model compiled with jit_compile="auto" keeps the fused path.
        # The fused path is TensorFlow's only: elsewhere the keras.ops path
        # compiles (JAX's jit, torch.compile), and Keras would otherwise run
        # the whole model uncompiled.
        self.supports_jit = not (
            self.use_fused and self.plastic and keras.backend.backend() == "tensorflow")

    @property
    def plastic(self):
        return self.plasticity != "none"

    def _split_shapes(self, input_shape):
        """`(inputs_shape, teacher_shape or None)`, checked."""
        taught = self.teacher_mode is not None
        # A pair is a list of shapes (tuples, lists or TensorShapes); a shape
        # is a sequence of ints and Nones.
        is_pair = isinstance(input_shape, (list, tuple)) and len(input_shape) > 0 and (
            input_shape[0] is not None and not isinstance(input_shape[0], int)
            and hasattr(input_shape[0], "__len__"))
        if taught != is_pair or (is_pair and len(input_shape) != 2):
            raise ValueError(
                f"PlasticDense(teacher_mode={self.teacher_mode!r}) expects "
                + ("`[inputs, teacher]`" if taught else "one tensor `inputs`")
                + f"; got input shape(s) {input_shape}."
                + (" Pass teacher_mode='add' or 'clamp' to give a teacher." if not taught else "")
            )
        shapes = list(input_shape) if is_pair else [input_shape, None]
        inputs_shape, teacher_shape = tuple(shapes[0]), shapes[1]
        if len(inputs_shape) != 3 or inputs_shape[-1] is None:
            raise ValueError(
                "PlasticDense expects inputs of shape (batch, time, in) with a known "
                f"width `in`; got shape {inputs_shape}. Wrap per-step feature "
                "extractors in keras.layers.TimeDistributed."
            )
        if teacher_shape is not None:
            teacher_shape = tuple(teacher_shape)
            if len(teacher_shape) != 3 or teacher_shape[-1] != self.units:
                raise ValueError(
                    f"The teacher must have shape (batch, time, units={self.units}); got "
                    f"{teacher_shape}."
                )
            for axis, name in ((0, "batch"), (1, "time")):
                a, b = inputs_shape[axis], teacher_shape[axis]
                if a is not None and b is not None and a != b:
                    raise ValueError(
                        f"inputs {inputs_shape} and teacher {teacher_shape} differ in the "
                        f"{name} dimension ({a} != {b})."
                    )
        return inputs_shape, teacher_shape

    def build(self, input_shape):
        inputs_shape, _ = self._split_shapes(input_shape)
        width = inputs_shape[-1]
        shape = (width, self.units)
        self.w = self.add_weight(shape=shape, initializer=self.w_initializer, name="w")
        self.alpha = self.eta_weight = self.bias = None
        if self.plastic:
            self.alpha = self.add_weight(
                shape=shape if self.plasticity == "per_connection" else (),
                initializer=self.alpha_initializer, name="alpha",
            )
            self.eta_weight = self.add_weight(
                shape=(), initializer=keras.initializers.Constant(self.eta),
                trainable=self.trainable_eta, constraint=EtaRange(), name="eta",
            )
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.units,), initializer=self.bias_initializer, name="bias")

    def fused_path_allowed(self):
        """Whether `call` runs the TensorFlow kernel of `hebbkeras.kernels.dense_fused`."""
        if not (self.use_fused and self.plastic and keras.backend.backend() == "tensorflow"):
            return False
        from hebbkeras.kernels import dispatch

        return not dispatch.in_xla_context()  # inside jit_compile: the keras.ops path

    def compute_mask(self, inputs, mask=None):
        """Refuses a mask (a ValueError): none is ignored in silence, none is passed on."""
        masks = mask if isinstance(mask, (list, tuple)) else [mask]
        if any(m is not None for m in masks):
            raise ValueError(
                "PlasticDense got a mask (from a Masking layer, Embedding(mask_zero=True) or "
                "mask=), which it does not support: its trace is updated at every step, "
                "padded ones included. Give it unpadded sequences of equal length (a few-shot "
                "episode has no padding), or remove the mask.")
        return None

    def call(self, inputs, training=False, mask=None):
        self.compute_mask(inputs, mask)
        if self.teacher_mode is not None:
            if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
                raise ValueError("PlasticDense with a teacher_mode is called on [inputs, teacher].")
            x, teacher = inputs
            teacher = K.cast(teacher, self.compute_dtype)
        else:
            x, teacher = inputs, None
        x = K.cast(x, self.compute_dtype)
        if not self.plastic:  # no trace: every step at once
            ys = ops.dense_step(x, None, self.w, None, None, self.bias, self.activation,
                                teacher, self.teacher_mode, self.teacher_scale)[0]
            return ys if self.return_sequences else ys[:, -1]
        weights = [K.cast(K.convert_to_tensor(v), x.dtype)
                   for v in (self.w, self.alpha, self.eta_weight)]
        bias = None if self.bias is None else K.cast(K.convert_to_tensor(self.bias), x.dtype)
        if self.fused_path_allowed():
            from hebbkeras.kernels import dense_fused  # TensorFlow only

            ys, hebb = dense_fused.plastic_dense_sequence(
                x, teacher, *weights, bias, activation=self.activation,
                teacher_mode=self.teacher_mode, teacher_scale=self.teacher_scale,
                rule=self.rule, eta_grad=self.trainable_eta,
            )
        else:
            ys, hebb = dense_sequence(
                x, teacher, *weights, bias, self.activation, self.teacher_mode,
                self.teacher_scale, self.rule,
            )
        output = ys if self.return_sequences else ys[:, -1]
        return (output, hebb) if self.return_state else output

    def compute_output_shape(self, input_shape):
        inputs_shape, _ = self._split_shapes(input_shape)
        batch, time, width = inputs_shape
        output = (batch, time, self.units) if self.return_sequences else (batch, self.units)
        if self.return_state:
            return output, (batch, width, self.units)
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "eta": self.eta,
                "trainable_eta": self.trainable_eta,
                "plasticity": self.plasticity,
                "rule": self.rule,
                "teacher_mode": self.teacher_mode,
                "teacher_scale": self.teacher_scale,
                "return_sequences": self.return_sequences,
                "return_state": self.return_state,
                "w_initializer": keras.initializers.serialize(self.w_initializer),
                "alpha_initializer": keras.initializers.serialize(self.alpha_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "use_fused": self.use_fused,
            }
        )
        return config


def dense_sequence(x, teacher, w, alpha, eta, bias=None, activation=lambda v: v,
                   teacher_mode="add", teacher_scale=1.0, rule="hebb"):
    """`ops.dense_step` over a sequence with `keras.ops.scan`: `(ys, hebb_T)`.

    x `(batch, time, in)`, teacher `(batch, time, units)` or None; the trace
    starts at zero. The reference path: autodiff keeps one trace per step.
    """
    batch, width, units = K.shape(x)[0], x.shape[-1], w.shape[-1]
    xs = K.transpose(x, (1, 0, 2))
    us = None if teacher is None else K.transpose(teacher, (1, 0, 2))

    def step(t, hebb):
        u = None if us is None else us[t]
        return ops.dense_step(xs[t], hebb, w, alpha, eta, bias, activation, u,
                              teacher_mode, teacher_scale, rule)

    hebb = K.zeros((batch, width, units), dtype=x.dtype)
    if x.shape[1] is not None:  # a known length: unrolled, differentiable on every backend
        ys = []
        for t in range(x.shape[1]):
            y, hebb = step(t, hebb)
            ys.append(y)
        return K.stack(ys, axis=1), hebb
    # An unknown length: keras.ops.scan's TensorFlow form wants outputs shaped
    # like the carry and slice_update has no TensorFlow gradient, so each
    # output is added into a time-major buffer through a one-hot mask.
    steps = K.shape(x)[1]

    def body(t, carry):
        hebb, ys = carry
        y, hebb = step(t, hebb)
        mask = K.cast(K.equal(K.arange(steps), t), x.dtype)[:, None, None]
        return hebb, ys + mask * y[None]

    ys = K.zeros((steps, batch, units), dtype=x.dtype)
    hebb, ys = K.fori_loop(0, steps, body, (hebb, ys))
    return K.transpose(ys, (1, 0, 2)), hebb
