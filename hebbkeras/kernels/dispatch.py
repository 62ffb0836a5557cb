"""Which path runs a PlasticRNN, and what every fused kernel checks first.

The fused kernels of `PlasticRNN` share one signature,

    plastic_sequence(x, y0, h0, w, alpha, eta, *, input_mode="clamp", rule="hebb",
                     eta_grad=True, interval=None, **kernel_options) -> (ys, hebb_T)

(`x` the clamping input or the additive drive; `eta_grad=False`: no gradient
for `eta`; `interval`: steps between stored traces), and each runs every
rule that has what it needs (`NEEDS`), or raises an error naming the rule
and the kernel (`check_rule`). `choose` is the one place that picks a path,
and says why. A rule the backend's fused kernel cannot run takes its
`FALLBACK` where that runs it (the neuromodulated rules take
`hebbkeras.kernels.modulated_fused` on TensorFlow, `hebbkeras.kernels.xla_modfused`
inside XLA and `hebbkeras.kernels.jax_modfused` on JAX, all with a hand-written
backward), else the cell loop.
"""

import collections
import logging

import keras

from hebbkeras import rules

INPUT_MODES = ("clamp", "add")

# What each kernel needs of a rule (attributes of `hebbkeras.rules.Rule`).
NEEDS = {
    "fused": ("plain", "decay_form", "invertible"),
    "fused (native)": ("plain", "decay_form", "native"),
    "xla_fused": ("plain", "decay_form"),
    "jax_fused": ("plain", "decay_form"),
    "dense_fused": ("plain", "decay_form", "invertible"),
    "jax_remat": ("modulated",),
    "tf_remat": ("modulated",),
    "xla_modfused": ("modulated",),
    "modulated_fused": ("modulated",),
    "jax_modfused": ("modulated",),
}
# The kernel that runs the rules a fused kernel cannot (`NEEDS`), where one does
# (`xla_modfused`, like `xla_fused`, needs a static number of time steps). `tf_remat`
# (autodiff per checkpointed chunk) runs them too, where a caller puts it here.
FALLBACK = {"jax_fused": "jax_modfused", "xla_fused": "xla_modfused", "fused": "modulated_fused"}

Choice = collections.namedtuple("Choice", "kernel reason")
Choice.__doc__ = """A path: `kernel` ("cell", "fused", "xla_fused", "jax_fused", "jax_remat",
"jax_modfused", "tf_remat", "xla_modfused" or "modulated_fused") and why."""

log = logging.getLogger("hebbkeras")


def check_rule(rule, kernel, input_mode=None):
    """The rule object of `rule` (a name or a rule) if `kernel` can run it (and
    `input_mode`); else a ValueError that names the rule, the kernel and what is missing."""
    if input_mode is not None and input_mode not in INPUT_MODES:
        raise ValueError(f"input_mode={input_mode!r}: the kernel {kernel} takes 'clamp' or 'add' "
                         "(the 'dense' mode's kernel output is an additive drive: pass it as 'add').")
    return rules.get(rule, kernel=kernel, needs=NEEDS[kernel])


def runs(rule, kernel):
    """Whether `kernel` can run `rule`, and if not the error's text."""
    try:
        check_rule(rule, kernel)
    except ValueError as e:
        return False, str(e)
    return True, ""


def use_native(rule, dtype, jit_backward=False):
    """Whether `hebbkeras.kernels.fused` runs its trace passes natively: the rule
    names a native implementation, the per-step gradient is not XLA-compiled,
    and the native kernels are available here (CPU, float32/64, built)."""
    from hebbkeras.kernels import native

    return (rule.native in native.IMPLEMENTATIONS and not jit_backward
            and native.available(dtype))


def in_xla_context():
    """True while TensorFlow traces for XLA, which cannot compile `hebbkeras.kernels.fused`'s
    loops (run lengths known only at run time)."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util  # no public equivalent

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def choose(use_fused, plastic, rule, mask=None, loop_options=(), static_time=True, dtype=None):
    """The path of one `PlasticRNN` call, and why (`Choice`; also logged at debug level).

    Args:
        use_fused: the layer's `use_fused`.
        plastic: whether the layer has a trace.
        rule: its rule (a name or a rule).
        mask: the call's mask.
        loop_options: the names of the set options only the cell loop runs
            (`go_backwards`, `stateful`, `unroll`).
        static_time: whether the number of time steps is known when traced.
        dtype: the compute dtype (whether `modulated_fused` can use its native ops).
    """
    backend = keras.backend.backend()
    kernel = {"jax": "jax_fused", "tensorflow": "fused"}.get(backend)
    if kernel == "fused" and in_xla_context():
        kernel = "xla_fused"
    if not use_fused:
        choice = Choice("cell", "use_fused=False")
    elif kernel is None:
        choice = Choice("cell", f"no fused kernel on the {backend} backend")
    elif not plastic:
        choice = Choice("cell", "plasticity='none': no trace to fuse")
    elif mask is not None:
        choice = Choice("cell", "a mask is given")
    elif loop_options:
        choice = Choice("cell", f"{', '.join(loop_options)} set")
    elif kernel == "xla_fused" and not static_time:
        choice = Choice("cell", "inside XLA the fused kernel needs a static number of time steps")
    else:
        ok, why = runs(rule, kernel)
        if not ok and kernel in FALLBACK and runs(rule, FALLBACK[kernel])[0]:
            ok, kernel = True, FALLBACK[kernel]
        choice = Choice(kernel, f"{kernel} runs rule {rules.get(rule).name!r}") if ok else (
            Choice("cell", why))
        if choice.kernel == "modulated_fused":
            from hebbkeras.kernels import modulated_fused

            how = ("the native CPU ops" if modulated_fused.use_native(dtype)
                   else "plain TensorFlow ops")
            choice = Choice(choice.kernel, f"{choice.reason} with {how}")
    log.debug("PlasticRNN path: %s (%s)", choice.kernel, choice.reason)
    return choice
