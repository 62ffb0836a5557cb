"""The Hebbian rule, eq. (2) of Miconi et al. (2018):

    hebb_{t+1} = (1 - eta) * hebb_t + eta * outer(u, y)

The decay form (R) of `hebbkeras.rules.base` with `d = 1 - eta` for every
column (`dd/deta = -1`, independent of `y`), so a clamped pattern `x` held
for `k` steps (`u = y = x` at each) is one update, a geometric series:

    hebb_{t+k} = a^k * hebb_t + (1 - a^k) * outer(x, x),    a = 1 - eta    (H)

Its step `j` (0 first) adds `eta a^(k-1-j) outer(x, x)` to the trace after the
run, so with `G` that trace's gradient, `post = x^T G`, `pre = G x`: the run's
output at step `j` gets `eta a^(k-1-j) post`, and as the next step's input
`eta a^(k-2-j) pre` (the input before the run, `j = -1`, `eta a^(k-1) pre`);
the trace before the run gets `a^k G`, and
`dL/deta = k a^(k-1) (x^T G x - sum(G * hebb_t))`.
The native CPU kernels implement this rule (`native = "hebb"`).
"""

from keras import ops

from hebbkeras.rules.base import DecayRule


class Hebb(DecayRule):
    name = "hebb"
    scalar_decay = True
    held_runs = True
    native = "hebb"

    def column_decay(self, eta, y):
        return 1.0 - eta

    def decay_eta(self, eta, y):
        return -1.0

    def rate(self, eta, y_bound):
        return eta

    def held_decay(self, eta, k):
        """`a^k` of eq. (H) (`k` a count; any dtype): the outer product's factor is `1 - a^k`."""
        return self.column_decay(eta, None) ** ops.cast(k, eta.dtype)

    def held_coefficients(self, eta, k, j):
        """`(as_post, as_pre)` of a held run's step `j` of `k`: `eta a^(k-1-j)`, and
        `eta a^(k-2-j)` for `j < k - 1` (0 at the run's last step); `j = -1` gives
        the input before the run. Elementwise in `k` and `j`."""
        a = self.column_decay(eta, None)
        kf, jf = ops.cast(k, eta.dtype), ops.cast(j, eta.dtype)
        as_post = eta * a ** (kf - 1.0 - jf)
        as_pre = ops.where(j < k - 1, eta * a ** (kf - 2.0 - jf), ops.zeros_like(as_post))
        return as_post, as_pre

    def held_eta_grad(self, eta, k, post, x, g_dot_hebb):
        """`dL/deta` of a held run: `k a^(k-1) (sum(post * x) - sum(G * hebb_t))`."""
        kf = ops.cast(k, eta.dtype)
        return kf * self.column_decay(eta, None) ** (kf - 1.0) * (ops.sum(post * x) - g_dot_hebb)
