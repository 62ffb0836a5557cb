"""The plasticity rules, one registered definition each (one file per rule).

    base    what a rule is (`Rule`), the decay form every kernel drives (`DecayRule`)
    hebb    eq. (2), with held runs and a native kernel
    oja     Oja's rule

Layers, the cell loop and every fused kernel take a rule by name or as the
object and resolve it here with `get`, which also checks what a kernel needs:

>>> from hebbkeras import rules
>>> rules.get("oja").invertible
True
>>> rules.get("oja", kernel="fused (native)", needs=("native",))
Traceback (most recent call last):
ValueError: kernel fused (native) cannot run plasticity rule 'oja': it has no native implementation ...

A new rule is a new module here that registers its definition, and its test.
"""

from hebbkeras.rules.base import LINALG, DecayRule, Rule, outer
from hebbkeras.rules.hebb import Hebb
from hebbkeras.rules.oja import Oja

__all__ = ["LINALG", "DecayRule", "Rule", "get", "names", "outer", "register"]

_REGISTRY = {}

# What a kernel may need of a rule: the attribute that says so, and how to say it lacks it.
NEEDS = {
    "decay_form": "it is not of the decay form d * hebb + eta * outer(u, y) the kernel's "
                  "gradient is written for",
    "invertible": "it has no inverse to rebuild traces backwards",
    "held_runs": "it cannot apply a held pattern's run in one update",
    "native": "it has no native implementation",
}


def register(rule):
    """Adds `rule` (a `Rule` instance with a `name`) to the registry; returns it."""
    if not isinstance(rule, Rule) or not rule.name:
        raise TypeError(f"register takes a named hebbkeras.rules.Rule; got {rule!r}")
    _REGISTRY[rule.name] = rule
    return rule


def names():
    """The registered rules' names, in registration order."""
    return tuple(_REGISTRY)


def get(rule, kernel=None, needs=()):
    """The `Rule` named `rule` (or `rule` itself), checked for what `kernel` `needs`.

    Args:
        rule: a name (`"hebb"`) or a `Rule`.
        kernel: the kernel's name, for the error messages.
        needs: attributes of `Rule` the kernel needs true (see `NEEDS`).

    Raises a ValueError naming the rule and the kernel for an unknown rule or
    one that lacks what the kernel needs; nothing falls back silently.
    """
    where = f" (kernel {kernel})" if kernel else ""
    if isinstance(rule, Rule):
        found = rule
    elif isinstance(rule, str) and rule in _REGISTRY:
        found = _REGISTRY[rule]
    else:
        raise ValueError(
            f"Unknown rule={rule!r}{where}: no plasticity rule has that name. Expected one "
            f"of {', '.join(map(repr, names()))} (hebbkeras.rules.register adds one).")
    for need in needs:
        if not getattr(found, need):
            raise ValueError(
                f"kernel {kernel} cannot run plasticity rule {found.name!r}: {NEEDS[need]}. "
                "Run it on the cell loop (use_fused=False), or use a rule the kernel supports.")
    return found


HEBB = register(Hebb())
OJA = register(Oja())
