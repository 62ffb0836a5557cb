"""hebbkeras: differentiable plasticity (Miconi, Clune & Stanley, 2018) for Keras 3."""

from hebbkeras import episodes, images, metrics, native, ops
from hebbkeras.cell import PlasticRNNCell
from hebbkeras.layer import PlasticRNN
from hebbkeras.metrics import BitErrorRate, summed_squared_error

__all__ = [
    "PlasticRNN",
    "PlasticRNNCell",
    "BitErrorRate",
    "summed_squared_error",
    "episodes",
    "images",
    "metrics",
    "native",
    "ops",
]
__version__ = "0.1.0"
