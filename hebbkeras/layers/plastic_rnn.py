"""PlasticRNN: the whole-episode plastic recurrent layer users reach for first."""

import importlib

import keras
from keras import ops as K

from hebbkeras.kernels import dispatch, schedule
from hebbkeras.layers.plastic_rnn_cell import PACKAGE, PlasticRNNCell

_CELL_ARGS = (
    "units",
    "input_mode",
    "input_scale",
    "eta",
    "trainable_eta",
    "plasticity",
    "rule",
    "modulation",
    "trace_clip",
    "modulation_fanout",
    "w_initializer",
    "alpha_initializer",
    "kernel_initializer",
    "bias_initializer",
)
# The kernels of the neuromodulated rules (`dispatch.FALLBACK`), one signature.
MODULATED_KERNELS = ("jax_remat", "jax_modfused", "tf_remat", "xla_modfused", "modulated_fused")
_RNN_ARGS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll")


_in_xla_context = dispatch.in_xla_context  # deprecated alias (0.1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PlasticRNN(keras.layers.RNN):
    """A recurrent layer with Hebbian plastic connections, run over whole episodes.

    Runs `PlasticRNNCell` over the time axis; the Hebbian trace starts at zero
    for every sequence (episode) unless an initial state is given. See
    `PlasticRNNCell` for the equations and the cell arguments.

    Args:
        units, input_mode, input_scale, eta, trainable_eta, plasticity, rule,
        modulation, trace_clip, modulation_fanout, w_initializer, alpha_initializer,
        kernel_initializer, bias_initializer: as in `PlasticRNNCell`.
        return_sequences: return `y` at every step `(batch, time, units)`
            instead of the last step `(batch, units)`.
        return_state: also return the final state, `y` `(batch, units)` and
            `hebb` `(batch, units, units)` (just `y` when `plasticity="none"`;
            `y`, `hebb` and the eligibility trace `E` `(batch, units, units)`
            with `modulation="retroactive"`), in the order of `state_names`.
        go_backwards, stateful, unroll: as in `keras.layers.RNN`.
        use_fused: run whole sequences through a fused kernel (one loop,
            hand-written gradient, O(B * N^2) training memory instead of
            O(T * B * N^2)) when the options allow: TensorFlow or JAX
            backend, plastic, no mask, not `go_backwards`, not `stateful`,
            not `unroll`. On TensorFlow the kernel is `hebbkeras.kernels.fused`,
            except inside an XLA-compiled function (`jit_compile=True`),
            where it is `hebbkeras.kernels.xla_fused` (static loops that XLA
            compiles with the rest of the train step; it needs a static
            number of time steps, else the cell loop runs). On JAX the
            kernel is `hebbkeras.kernels.jax_fused`, XLA code that Keras compiles
            with the rest of the train step. Otherwise, or with
            `use_fused=False`, the cell loop of `keras.layers.RNN` runs; all
            compute the same function; `choose_path` picks the path and
            `last_path` says which ran and why (also logged at debug level
            to the "hebbkeras" logger). A rule a kernel cannot run
            takes the cell loop, for that reason (the neuromodulated rules of
            `modulation` run `hebbkeras.kernels.modulated_fused` on TensorFlow,
            with the native CPU ops where they can be had, and
            `hebbkeras.kernels.jax_modfused` on JAX, both with a hand-written
            backward, and inside XLA `hebbkeras.kernels.xla_modfused`, the same
            backward with a static number of time steps). The layer supports XLA
            (`supports_jit`), so `jit_compile="auto"` (XLA where a GPU is
            found) trains on GPUs with the XLA kernel.
            On CPU, with a rule that has a native implementation (the
            Hebbian rule), `hebbkeras.kernels.fused`'s per-step
            passes run in the compiled ops of `hebbkeras.kernels.native` (built on
            first use; plain TensorFlow ops where they cannot be built).
        fused_xla: compile `hebbkeras.kernels.fused`'s per-step gradient with XLA
            instead (plain TensorFlow ops: slower than the native ops on
            CPU), outside `jit_compile`. Only training uses it; inference and
            exported models never need XLA.

    Call arguments:
        sequences: `(batch, time, input_width)`, at least one time step.
            Integer or boolean inputs (such as +-1 patterns) are cast to the
            layer's compute dtype, as Keras's own RNN layers compute in it.
        initial_state: optional `[y, hebb]`, `(batch, units)` and
            `(batch, units, units)` (just `[y]` when `plasticity="none"`;
            `[y, hebb, E]` with `modulation="retroactive"`); zeros by default.
        mask, training: as in `keras.layers.RNN`.

    Inputs of the wrong rank, width or length and initial states of the
    wrong shape raise a ValueError saying what was expected.

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
        modulation="none",
        trace_clip=1.0,
        modulation_fanout=False,
        w_initializer=None,
        alpha_initializer=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        stateful=False,
        unroll=False,
        use_fused=True,
        fused_xla=False,
        **kwargs,
    ):
        self.use_fused = bool(use_fused)
        self.fused_xla = bool(fused_xla)
        cell = PlasticRNNCell(
            units,
            input_mode=input_mode,
            input_scale=input_scale,
            eta=eta,
            trainable_eta=trainable_eta,
            plasticity=plasticity,
            rule=rule,
            modulation=modulation,
            trace_clip=trace_clip,
            modulation_fanout=modulation_fanout,
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
        # Every path compiles with XLA: inside jit_compile the fused kernel is
        # hebbkeras.kernels.xla_fused (TensorFlow) or hebbkeras.kernels.jax_fused (JAX).
        self.supports_jit = True

    # The cell's hyperparameters and weights, reachable from the layer.
    units = property(lambda self: self.cell.units)
    input_mode = property(lambda self: self.cell.input_mode)
    plasticity = property(lambda self: self.cell.plasticity)
    rule = property(lambda self: self.cell.rule)
    modulation = property(lambda self: self.cell.modulation)
    trace_clip = property(lambda self: self.cell.trace_clip)
    state_names = property(lambda self: self.cell.state_names)
    modulator_kernel = property(lambda self: self.cell.modulator_kernel)
    modulator_bias = property(lambda self: self.cell.modulator_bias)
    modulator_fanout = property(lambda self: self.cell.modulator_fanout)
    w = property(lambda self: self.cell.w)
    alpha = property(lambda self: self.cell.alpha)
    eta = property(lambda self: self.cell.eta_weight)

    def choose_path(self, mask=None, sequences_shape=None):
        """The path a call runs (see `use_fused`): a `dispatch.Choice`, `(kernel, reason)`."""
        loop_options = [n for n in ("go_backwards", "stateful", "unroll") if getattr(self, n)]
        static_time = sequences_shape is None or sequences_shape[1] is not None
        return dispatch.choose(self.use_fused, self.cell.plastic, self.cell.plasticity_rule, mask,
                               loop_options, static_time, self.compute_dtype)

    def fused_path_allowed(self, mask=None, sequences_shape=None):
        """Deprecated (0.1): whether `choose_path` picks a fused kernel."""
        return self.choose_path(mask, sequences_shape).kernel != "cell"

    def _check_shapes(self, sequences_shape, initial_state_shape=None):
        """Raises a ValueError, in the user's terms, for inputs this layer cannot run:
        not `(batch, time, width)`, no time steps, a width the cell does not take,
        or an initial state that is not `[y (batch, units), hebb (batch, units, units)]`
        (and `E`, shaped as `hebb`, with `modulation="retroactive"`)."""
        shape = tuple(sequences_shape)
        if len(shape) != 3:
            raise ValueError(
                f"PlasticRNN layer {self.name!r} expects input with ndim=3, (batch, time, "
                f"features); found ndim={len(shape)}, shape {shape}."
                + (" For a single step, add a time axis: x[:, None]." if len(shape) == 2 else "")
            )
        if shape[1] == 0:
            raise ValueError(
                f"PlasticRNN layer {self.name!r} needs at least one time step; got input "
                f"shape {shape}."
            )
        self.cell.check_input_width(shape[2])
        if initial_state_shape is None:
            return
        batch, n = shape[0], self.units
        traces = self.state_names[1:]
        names = ["y (batch, units)"] + [f"{t} (batch, units, units)" for t in traces]
        want = [(batch, n)] + [(batch, n, n)] * len(traces)
        got = [tuple(s) for s in initial_state_shape]
        fits = len(got) == len(want) and all(
            len(g) == len(w) and all(a is None or b is None or a == b for a, b in zip(g, w))
            for g, w in zip(got, want)
        )
        if not fits:
            expected = ", ".join(f"{k} = {w}".replace("None", "batch") for k, w in zip(names, want))
            raise ValueError(
                f"PlasticRNN layer {self.name!r}: initial_state must be [{expected}] for input shape "
                f"{shape} and units={n}; got {len(got)} state(s) shaped {got}."
            )

    def _checked(self, sequences, initial_state):
        """`(sequences, initial_state)` after `_check_shapes`; integer or boolean
        inputs cast to the compute dtype (see the class docstring)."""
        state = None
        if initial_state is not None:
            state = list(initial_state) if isinstance(initial_state, (list, tuple)) else [
                initial_state]
            state = [K.convert_to_tensor(s) for s in state]
        self._check_shapes(sequences.shape, None if state is None else [s.shape for s in state])
        if not keras.backend.is_float_dtype(sequences.dtype):
            sequences = K.cast(sequences, self.compute_dtype)
        return sequences, state

    def build(self, sequences_shape, initial_state_shape=None):
        self._check_shapes(sequences_shape, initial_state_shape)
        super().build(sequences_shape, initial_state_shape)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        """The sequence through the path `choose_path` picks (as keras.layers.LSTM
        dispatches): `(last_output, outputs, states)`; records it in `last_path`."""
        sequences, initial_state = self._checked(sequences, initial_state)
        self.last_path = self.choose_path(mask, sequences.shape)
        if self.last_path.kernel == "cell":
            return super().inner_loop(sequences, initial_state, mask, training)
        cell = self.cell
        dtype = sequences.dtype
        drive, clamp = cell.input_terms(sequences)
        if self.last_path.kernel in MODULATED_KERNELS:  # the neuromodulated rules' kernels
            remat = importlib.import_module(f"hebbkeras.kernels.{self.last_path.kernel}")
            cast = [K.cast(K.convert_to_tensor(v), dtype) for v in initial_state + [
                cell.w, cell.alpha, cell.eta_weight, *cell.modulator]]
            k = len(initial_state)
            ys, traces = remat.plastic_sequence(
                clamp if drive is None else drive, cast[0], tuple(cast[1:k]), *cast[k:k + 3],
                tuple(cast[k + 3:]), input_mode="clamp" if drive is None else "add",
                rule=cell.plasticity_rule, trace_clip=cell.trace_clip)
            return ys[:, -1], ys, [ys[:, -1], *traces]
        y0, hebb0 = initial_state
        options = {}
        if self.last_path.kernel == "jax_fused":
            from hebbkeras.kernels import jax_fused as kernel  # JAX only
        elif self.last_path.kernel == "xla_fused":
            from hebbkeras.kernels import xla_fused as kernel  # TensorFlow inside jit_compile
        else:
            from hebbkeras.kernels import fused as kernel  # TensorFlow only

            options["jit_backward"] = self.fused_xla
        if self.last_path.kernel != "fused":  # static schedules: a Python interval
            options["interval"] = schedule.checkpoint_interval(
                cell.eta, sequences.shape[1], eta_may_change=cell.trainable_eta)
        ys, hebb = kernel.plastic_sequence(
            clamp if drive is None else drive,
            *[K.cast(K.convert_to_tensor(v), dtype)
              for v in (y0, hebb0, cell.w, cell.alpha, cell.eta_weight)],
            input_mode="clamp" if drive is None else "add", rule=cell.rule,
            eta_grad=cell.trainable_eta, **options,
        )
        return ys[:, -1], ys, [ys[:, -1], hebb]

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        self._check_shapes(sequences_shape, initial_state_shape)
        # keras.layers.RNN can only describe vector states; the trace is a matrix.
        batch, time, n = sequences_shape[0], sequences_shape[1], self.cell.units
        output = (batch, time, n) if self.return_sequences else (batch, n)
        if not self.return_state:
            return output
        states = [(batch, n)] + [(batch, n, n)] * len(self.state_names[1:])
        return output, *states

    def get_config(self):
        cell_config = self.cell.get_config()
        config = {k: cell_config[k] for k in _CELL_ARGS}
        base = super().get_config()
        base.pop("cell", None)
        config.update({k: base.pop(k) for k in _RNN_ARGS})
        config.update({k: v for k, v in base.items() if k != "zero_output_for_mask"})
        config["use_fused"] = self.use_fused
        config["fused_xla"] = self.fused_xla
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
