"""A user's mistakes with PlasticRNN end in one ValueError in the user's terms.

Each case runs on the fused path and on the cell loop (`use_fused=False`):
the message must name what was expected and what was given, never a
TensorFlow op's shape error.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hebbkeras
from hebbkeras.kernels import fused

PATHS = pytest.mark.parametrize("use_fused", [True, False], ids=["fused", "cell_loop"])


def ones(*shape, dtype="float32"):
    return np.ones(shape, dtype)


def raises(match, fn):
    """`fn()` raises exactly a ValueError whose message contains every part of `match`."""
    with pytest.raises(ValueError) as info:
        fn()
    assert type(info.value) is ValueError
    for part in match:
        assert part in str(info.value), str(info.value)


@PATHS
def test_rank_two_input_says_ndim_3_expected(use_fused):
    """Was: "input width must equal units=8; got width 2" (the batch read as the width)."""
    layer = hebbkeras.PlasticRNN(8, use_fused=use_fused)
    raises(["expects input with ndim=3", "(batch, time, features)", "found ndim=2",
            "shape (2, 8)", "x[:, None]"], lambda: layer(ones(2, 8)))


@PATHS
@pytest.mark.parametrize("shape", [(2, 5), (2, 3, 5, 4)])
def test_dense_mode_wrong_rank(use_fused, shape):
    layer = hebbkeras.PlasticRNN(8, input_mode="dense", use_fused=use_fused)
    raises(["expects input with ndim=3", f"found ndim={len(shape)}", f"shape {shape}"],
           lambda: layer(ones(*shape)))


@PATHS
def test_dense_mode_other_width_after_building(use_fused):
    layer = hebbkeras.PlasticRNN(8, input_mode="dense", use_fused=use_fused)
    layer(ones(2, 3, 5))
    raises(["built for input width 5", "kernel is (5, 8)", "got width 6"],
           lambda: layer(ones(2, 3, 6)))


@PATHS
def test_clamp_mode_other_width_after_building(use_fused):
    layer = hebbkeras.PlasticRNN(8, use_fused=use_fused)
    layer(ones(2, 3, 8))
    raises(["width must equal units=8; got width 6"], lambda: layer(ones(2, 3, 6)))


def test_other_width_in_a_functional_model_is_refused_at_once():
    layer = hebbkeras.PlasticRNN(8, input_mode="dense")
    layer(keras.Input((3, 5)))
    raises(["built for input width 5", "got width 6"], lambda: layer(keras.Input((3, 6))))


@PATHS
def test_zero_time_steps(use_fused):
    layer = hebbkeras.PlasticRNN(8, use_fused=use_fused)
    raises(["at least one time step", "(2, 0, 8)"], lambda: layer(ones(2, 0, 8)))


@PATHS
@pytest.mark.parametrize(
    "state_shapes",
    [[(2, 8)], [(2, 8), (2, 8)], [(2, 8), (2, 8, 7)], [(3, 8), (3, 8, 8)], [(2, 8, 8), (2, 8)]],
    ids=["y_only", "hebb_a_vector", "hebb_not_square", "other_batch", "swapped"],
)
def test_initial_state_of_the_wrong_shape(use_fused, state_shapes):
    layer = hebbkeras.PlasticRNN(8, use_fused=use_fused)
    state = [np.zeros(s, "float32") for s in state_shapes]
    raises(["initial_state must be", "y (batch, units) = (2, 8)",
            "hebb (batch, units, units) = (2, 8, 8)", f"shaped {state_shapes}"],
           lambda: layer(ones(2, 3, 8), initial_state=state))


def test_initial_state_without_plasticity_is_y_only():
    layer = hebbkeras.PlasticRNN(8, plasticity="none")
    raises(["initial_state must be [y (batch, units) = (2, 8)]", "got 2 state(s)"],
           lambda: layer(ones(2, 3, 8), initial_state=[np.zeros((2, 8)), np.zeros((2, 8, 8))]))


@PATHS
@pytest.mark.parametrize("mode", ["clamp", "dense"])
def test_integer_inputs_are_cast_to_the_compute_dtype(use_fused, mode, monkeypatch):
    """+-1 patterns given as int32 compute what the same float32 inputs do
    (as keras.layers.SimpleRNN and LSTM accept them)."""
    calls = []
    original = fused.plastic_sequence
    monkeypatch.setattr(fused, "plastic_sequence",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    x = np.random.default_rng(0).choice([-1, 0, 1], size=(2, 4, 6)).astype("int32")
    layer = hebbkeras.PlasticRNN(6, input_mode=mode, eta=0.3, return_sequences=True,
                                 use_fused=use_fused)
    out = layer(x)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out, layer(x.astype("float32")), rtol=1e-6, atol=1e-7)
    assert bool(calls) == use_fused


def test_valid_initial_states_still_work():
    """The checks accept an unknown batch and a state given as a tuple."""
    layer = hebbkeras.PlasticRNN(4, input_mode="add", return_state=True)
    inputs = keras.Input((3, 4))
    y0, h0 = keras.Input((4,)), keras.Input((4, 4))
    out, y, hebb = layer(inputs, initial_state=(y0, h0))
    assert tuple(hebb.shape) == (None, 4, 4)


def test_plain_keras_rnn_returning_the_trace_points_to_plastic_rnn():
    """Was: the trace came back as a list of two (batch, 4) tensors, and the
    model failed later with AttributeError: 'list' object has no attribute 'shape'."""
    inputs = keras.Input((5, 4))
    rnn = keras.layers.RNN(hebbkeras.PlasticRNNCell(4, input_mode="add"), return_state=True)
    raises(["hebbkeras.PlasticRNN(4, ..., return_state=True)", "(batch, 4, 4)"],
           lambda: rnn(inputs))


def test_plain_keras_rnn_still_works_where_it_can():
    """Without return_state in a Functional model, and with it on real tensors
    (eagerly and in a traced function)."""
    inputs = keras.Input((5, 4))
    cell = hebbkeras.PlasticRNNCell(4, input_mode="add")
    out = keras.layers.RNN(cell)(inputs)
    assert tuple(out.shape) == (None, 4)
    stepper = keras.layers.RNN(cell, return_state=True)  # as export/ steps a model
    _, _, hebb = stepper(ones(2, 5, 4))
    assert hebb.shape == (2, 4, 4)
    traced = tf.function(stepper, input_signature=[tf.TensorSpec([None, None, 4])])
    assert traced(ones(2, 5, 4))[2].shape == (2, 4, 4)
    assert tuple(cell.state_size[1]) == (4, 4) and cell.state_size[1] == (4, 4)


def test_plastic_dense_refuses_a_mask_rather_than_ignoring_it():
    """Issue 24: a masked sequence used to be read as if unpadded, in silence."""
    from hebbkeras.layers.plastic_dense import PlasticDense

    x = np.ones((2, 4, 3), "float32")
    x[:, 2:] = 0.0  # padding that Masking marks
    expected = ("PlasticDense got a mask", "unpadded sequences")
    inputs = keras.Input((4, 3))
    raises(expected, lambda: PlasticDense(2)(keras.layers.Masking()(inputs)))
    raises(expected, lambda: PlasticDense(2)(x, mask=x[..., 0] != 0))
    layer = PlasticDense(2, teacher_mode="add")
    raises(expected, lambda: layer([x, np.zeros((2, 4, 2), "float32")], mask=[x[..., 0] != 0, None]))
    assert PlasticDense(2)(x).shape == (2, 2)  # without a mask, as before
