"""Oja's rule (Oja 1982), which keeps the trace bounded without a decay of its own:

    hebb_{t+1}[i, j] = hebb_t[i, j] + eta * y[j] * (u[i] - y[j] * hebb_t[i, j])

The decay form (R) of `hebbkeras.rules.base` with a per-column decay
`d_j = 1 - eta * y_j^2` (`dd_j/deta = -y_j^2`, `dd_j/dy_j = -2 eta y_j`): it
inverts while `eta * y_j^2 < 1`, and a step replaces at most `eta * max y^2`
of the trace. Held runs do not reduce to one update (the decay depends on
`y`), and there is no native kernel.
"""

from keras import ops

from hebbkeras.rules.base import DecayRule


class Oja(DecayRule):
    name = "oja"

    def column_decay(self, eta, y):
        return 1.0 - eta * ops.square(y)

    def decay_eta(self, eta, y):
        return -ops.square(y)

    def decay_y(self, eta, y):
        return -2.0 * eta * y

    def rate(self, eta, y_bound):
        return eta * y_bound**2
