"""The Keras layers: `PlasticRNNCell`, `PlasticRNN` and `PlasticDense` (every Keras backend)."""

from hebbkeras.layers.plastic_dense import PlasticDense
from hebbkeras.layers.plastic_rnn import PlasticRNN
from hebbkeras.layers.plastic_rnn_cell import EtaRange, PlasticRNNCell

__all__ = ["EtaRange", "PlasticDense", "PlasticRNN", "PlasticRNNCell"]
