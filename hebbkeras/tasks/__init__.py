"""The paper's tasks: episode data and environments (TensorFlow code, imported on first use).

    episodes    binary patterns (the paper's first task), episode indices for tf.data
    images      natural-image episodes (CIFAR-10 through tfds) and their losses
    fewshot     N-way K-shot episodes of any labelled image set
    omniglot    Omniglot through tfds, its preprocessing and the original code's split
    handwriting an offline Omniglot-like set of drawn characters, served as tfds omniglot
    maze        the batched maze environment, in TensorFlow ops
    rl          the maze agent and its advantage actor-critic loss
    cue_reward  Backpropamine's cue-reward association task, batched, in TensorFlow ops
    cue_agent   its (neuromodulated) actor-critic agent
    tfds_data   loading a tfds data set with clear errors when it is missing
"""

from hebbkeras import _lazy

TENSORFLOW_MODULES = ("episodes", "images", "fewshot", "omniglot", "maze", "rl", "cue_reward",
                      "cue_agent", "tfds_data")
__getattr__, __dir__ = _lazy.lazy_modules(__name__, dict.fromkeys(TENSORFLOW_MODULES, "tensorflow"))
