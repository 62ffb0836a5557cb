"""The serving signatures of an exported plastic network, as `tf.function`s.

Three signatures, every input and output named, the batch dimension free:

    serving_default  episode [batch, time, width]               -> completion [batch, pattern_size]
    complete         patterns [batch, k, pattern_size],
                     query [batch, pattern_size]                 -> completion [batch, pattern_size]
    step             inputs [batch, steps, width], y [batch, units],
                     hebb [batch, units, units]
                     (, E [batch, units, units])                 -> y, hebb (, E), outputs [batch, steps, units]

`width` is the model's input width (`pattern_size + 1`: the pattern, then the
bias input, which is 1 at every step); `units` its number of neurons. `complete`
builds the episode in the graph with `hebbkeras.tasks.episodes.schedule_inputs` and the
trained schedule, each cycle in the order that function draws from the fixed
seed `ORDER_SEED`, so one request always gives one answer. Networks without a
trace (`plasticity="none"`) have no `hebb` in `step`; a retroactively
neuromodulated network (`modulation="retroactive"`) carries its eligibility
trace `E` there too (the states are the layer's `state_names`); networks that
are not `[preprocessing ->] PlasticRNN` (the LSTM baseline) have no `step`.

Every input is checked inside the graph before it is used: TF Serving feeds
tensors to the graph without comparing them with the signature, so a wrong
shape or a NaN would otherwise fail somewhere deep inside, or not at all. The
checks avoid ops that TensorFlow or Grappler could fold away using the
signature's static shapes (`tf.rank`, asserts on static shapes).
No function is compiled with XLA: TF Serving runs without it by default.
"""

import dataclasses

import keras
import tensorflow as tf

import hebbkeras
from hebbkeras.tasks import episodes

ORDER_SEED = (0, 0)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the signatures need to know about the trained network."""

    pattern_size: int
    schedule: episodes.Schedule
    max_items: int
    width: int
    units: int
    states: tuple  # the names of `step`'s states: ("y",), ("y", "hebb") or ("y", "hebb", "E")
    stepper: bool  # whether `step` is exported


def check_input(x, name, dims, extra=""):
    """`x` after asserting its rank, the given dims, and that it is finite.

    `dims` holds an int for a fixed dimension and a name (str) for a free one;
    the error names the expected shape, e.g. `[batch, k, 16]`.
    """
    expected = "[" + ", ".join(str(d) for d in dims) + "]"
    message = f"{name} must be float32 {expected}{extra}; got shape"
    rank = len(dims)
    shape = tf.raw_ops.Shape(input=x)
    # Pad with -1 so that every index below exists whatever the rank sent.
    padded = tf.concat([shape, tf.fill([rank + 1], -1)], axis=0)
    ok = tf.logical_and(tf.equal(padded[rank], -1), tf.greater_equal(padded[rank - 1], 0))
    for i, d in enumerate(dims):
        if isinstance(d, int):
            ok = tf.logical_and(ok, tf.equal(padded[i], d))
    shape_ok = tf.debugging.Assert(ok, [message, shape], summarize=rank + 2)
    with tf.control_dependencies([shape_ok]):
        finite = tf.debugging.Assert(
            tf.reduce_all(tf.math.is_finite(x)),
            [f"{name} contains NaN or Inf; send finite float32 values, shape {expected}"],
        )
    with tf.control_dependencies([finite]):
        return tf.identity(x), shape


def _assert(condition, message, *data):
    return tf.debugging.Assert(condition, [message, *data], summarize=8)


def find_plastic_chain(model):
    """`(layers, rnn)` if `model` is a chain of layers ending in a PlasticRNN, else None.

    The `step` signature runs the same layers, with the PlasticRNN given an
    initial state; the trainers' plastic and rnn networks have this form.
    """
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    if not layers or not isinstance(layers[-1], hebbkeras.PlasticRNN):
        return None
    rnn = layers[-1]
    if rnn.return_sequences or rnn.return_state or len(model.inputs) != 1:
        return None
    previous = model.inputs[0]
    for layer in layers:
        if layer.input is not previous:
            return None
        previous = layer.output
    if previous is not model.outputs[0]:
        return None
    return layers, rnn


def build(model, pattern_size, schedule, max_items):
    """`(module, signatures, spec)`: a `tf.Module` holding the variables the
    signatures use, and the signatures for `tf.saved_model.save`."""
    width = model.inputs[0].shape[-1]
    chain = find_plastic_chain(model)
    units = chain[1].units if chain else None
    states = tuple(chain[1].state_names) if chain else ()
    spec = Spec(pattern_size, schedule, max_items, width, units, states, chain is not None)
    dtype = model.inputs[0].dtype

    # The same layers, with a free time axis (the trained model fixes it).
    any_length = keras.models.clone_model(
        model,
        input_tensors=keras.Input(batch_shape=(None, None, width), dtype=dtype, name="episode"),
        clone_function=lambda layer: layer,
    )

    def completion(episode):
        out = any_length(tf.cast(episode, dtype), training=False)
        return tf.cast(out[:, :pattern_size], tf.float32)

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, width], tf.float32, name="episode")],
        jit_compile=False,
        autograph=False,
    )
    def serve(episode):
        episode, shape = check_input(episode, "episode", ["batch", "time", width], " with time >= 1")
        with tf.control_dependencies([_assert(shape[1] >= 1, "episode needs time >= 1; got shape", shape)]):
            return {"completion": completion(episode)}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, pattern_size], tf.float32, name="patterns"),
            tf.TensorSpec([None, pattern_size], tf.float32, name="query"),
        ],
        jit_compile=False,
        autograph=False,
    )
    def complete(patterns, query):
        k_range = f" with 1 <= k <= {max_items}"
        patterns, p_shape = check_input(patterns, "patterns", ["batch", "k", pattern_size], k_range)
        query, q_shape = check_input(query, "query", ["batch", pattern_size])
        k = p_shape[1]
        checks = [
            _assert(
                tf.logical_and(k >= 1, k <= max_items),
                f"patterns holds k items; this model takes 1 <= k <= {max_items} "
                f"(it was trained with {schedule.num_items}); got shape",
                p_shape,
            ),
            _assert(
                tf.equal(p_shape[0], q_shape[0]),
                "patterns and query must have the same batch size; got shapes",
                p_shape,
                q_shape,
            ),
        ]
        with tf.control_dependencies(checks):
            episode = build_episodes(patterns, query, k, schedule, max_items)
        return {"completion": completion(episode)}

    signatures = {"serving_default": serve, "complete": complete}
    if chain:
        signatures["step"] = _step_function(chain, spec, dtype)
    signatures = {name: fn.get_concrete_function() for name, fn in signatures.items()}
    module = tf.Module()
    for name, fn in signatures.items():
        setattr(module, name, fn)
    # Track the tf.Variables the functions read (not the Keras objects that own
    # them), so that the TF1 loader of TF Serving restores them.
    seen, variables = set(), []
    for fn in signatures.values():
        for v in fn.variables:
            if id(v) not in seen:
                seen.add(id(v))
                variables.append(v)
    module.served_variables = variables
    return module, signatures, spec


def build_episodes(patterns, query, k, schedule, max_items):
    """The episodes `[batch, steps(k), pattern_size + 1]` of a `complete` request.

    `episodes.schedule_inputs` builds one episode from `(items, query)` with
    `num_items` fixed in the graph; one branch per allowed `k` gives every
    `k` its schedule. All episodes of a batch share the presentation order, so
    the batch rides along in the width axis: `[k, batch * pattern_size]`.
    """
    size = patterns.shape[-1]
    batch = tf.shape(patterns)[0]

    def branch(n):
        def fn():
            items = tf.reshape(tf.transpose(patterns, [1, 0, 2]), [n, -1])
            inputs = episodes.schedule_inputs(
                items,
                tf.reshape(query, [-1]),
                dataclasses.replace(schedule, num_items=n),
                tf.constant(ORDER_SEED, tf.int64),
                bias=False,
            )
            inputs = tf.transpose(tf.reshape(inputs, [-1, batch, size]), [1, 0, 2])
            return tf.concat([inputs, tf.ones_like(inputs[..., :1])], axis=-1)

        return fn

    index = tf.clip_by_value(k - 1, 0, max_items - 1)
    return tf.switch_case(index, [branch(n) for n in range(1, max_items + 1)])


def _step_function(chain, spec, dtype):
    """The `step` signature: `inputs` and the states `spec.states` -> the outputs and
    the new states, by a loop over the trained layer's cell (its variables)."""
    layers, rnn = chain
    width, units = spec.width, spec.units
    stepper = keras.layers.RNN(rnn.cell, return_sequences=True, return_state=True)
    dims = {name: ["batch", units] if name == "y" else ["batch", units, units]
            for name in spec.states}

    def run(inputs, *states):
        inputs, shape = check_input(inputs, "inputs", ["batch", "steps", width], " with steps >= 1")
        checks = [_assert(shape[1] >= 1, "inputs needs steps >= 1; got shape", shape)]
        checked = []
        for name, state in zip(spec.states, states):
            state, state_shape = check_input(state, name, dims[name])
            checked.append(state)
            checks.append(_assert(
                tf.equal(state_shape[0], shape[0]),
                f"{name} must have the batch size of inputs; got shapes",
                state_shape,
                shape,
            ))
        with tf.control_dependencies(checks):
            # tf.identity: a cast to the same dtype adds no op to hang the checks on.
            x = tf.identity(tf.cast(inputs, dtype))
            checked = [tf.identity(tf.cast(s, dtype)) for s in checked]
        for layer in layers[:-1]:
            x = layer(x, training=False)
        outputs, *new_states = stepper(x, initial_state=checked)
        result = {"outputs": outputs, **dict(zip(spec.states, new_states))}
        return {k: tf.cast(v, tf.float32) for k, v in result.items()}

    specs = [tf.TensorSpec([None, None, width], tf.float32, name="inputs")] + [
        tf.TensorSpec([None if d == "batch" else d for d in dims[name]], tf.float32, name=name)
        for name in spec.states]
    return tf.function(run, input_signature=specs, jit_compile=False, autograph=False)
