"""Fused whole-sequence kernels: one loop and a hand-written gradient per backend.

    fused        TensorFlow, outside XLA; its per-step passes in the CPU ops of `native`
    native       the compiled TensorFlow CPU ops (built on first use)
    xla_fused    TensorFlow inside `jit_compile=True`: static loops XLA compiles
    jax_fused    JAX: a custom_vjp over a static scan
    dense_fused  PlasticDense's TensorFlow path
    modulated_fused  TensorFlow outside XLA, the neuromodulated rules: checkpoints, chunk
                 recompute and a hand-written backward (native ops or plain TensorFlow)
    xla_modfused TensorFlow inside XLA, the neuromodulated rules: modulated_fused's backward
                 in static loops
    xla_native   xla_modfused's per-step passes: jax_native's XLA FFI handlers registered
                 with TensorFlow's XLA, as custom calls (built on first use)
    tf_remat     the neuromodulated rules: the cell step in checkpointed chunks, autodiff per chunk
    jax_remat    the same on JAX (jax.checkpoint)
    jax_modfused JAX, the neuromodulated rules: modulated_fused's backward in a custom_vjp
    jax_native   jax_modfused's per-step passes as XLA FFI calls on CPU (built on first use)
    cxx          compiling either backend's kernel libraries into the cache (no framework)
    schedule     the static step schedule and checkpoint interval every kernel shares
    dispatch     the kernels' shared signature and rule checks; which path a PlasticRNN runs

Each is imported on first use; `schedule` and `dispatch` are keras.ops code.
"""

from hebbkeras import _lazy

TENSORFLOW_MODULES = ("fused", "native", "xla_fused", "dense_fused", "tf_remat", "modulated_fused",
                      "xla_modfused", "xla_native")
__getattr__, __dir__ = _lazy.lazy_modules(
    __name__, {**dict.fromkeys(TENSORFLOW_MODULES, "tensorflow"), "jax_fused": "jax",
               "jax_remat": "jax", "jax_modfused": "jax", "jax_native": "jax",
               "schedule": "keras", "dispatch": "keras"})
