"""The plasticity rules, one registered definition each (one file per rule).

    base    what a rule is (`Rule`), the decay form every kernel drives (`DecayRule`)
    hebb    eq. (2), with held runs and a native kernel
    oja     Oja's rule
    modulated  neuromodulated rules (Backpropamine): simple, retroactive

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
from hebbkeras.rules.modulated import Modulated, Retroactive, Simple
from hebbkeras.rules.oja import Oja

__all__ = ["LINALG", "DecayRule", "Modulated", "Rule", "get", "names", "outer", "plain",
           "register"]

_REGISTRY = {}

# What a kernel may need of a rule: the attribute that says so, and how to say it lacks it.
NEEDS = {
    "plain": "it is neuromodulated (its update takes the modulation M_t and clips the "
             "trace), which this kernel does not run yet",
    "decay_form": "it is not of the decay form d * hebb + eta * outer(u, y) the kernel's "
                  "gradient is written for",
    "invertible": "it has no inverse to rebuild traces backwards",
    "held_runs": "it cannot apply a held pattern's run in one update",
    "native": "it has no native implementation",
    "modulated": "it is not neuromodulated (the fused kernels run it)",
}


def register(rule):
    """Adds `rule` (a `Rule` instance with a `name`) to the registry; returns it."""
    if not isinstance(rule, Rule) or not rule.name:
        raise TypeError(f"register takes a named hebbkeras.rules.Rule; got {rule!r}")
    _REGISTRY[rule.name] = rule
    return rule


def names(plain=None):
    """The registered rules' names, in registration order (`plain=True`: only the
    rules of `update(hebb, u, y, eta)`; `False`: only the neuromodulated ones)."""
    return tuple(n for n, r in _REGISTRY.items() if plain is None or r.plain == plain)


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


def plain(rule, where):
    """The plain rule `rule` (see `Rule.plain`), or a ValueError naming `where` (the
    layer) for a neuromodulated one, which takes `modulation=` instead."""
    found = get(rule)
    if not found.plain:
        raise ValueError(
            f"{where} cannot take rule={found.name!r}: it is a neuromodulated rule, which "
            f"PlasticRNN and PlasticRNNCell take as modulation={found.name!r} (with "
            f"rule='hebb'). rule takes one of {', '.join(map(repr, names(plain=True)))}.")
    return found


HEBB = register(Hebb())
OJA = register(Oja())
SIMPLE = register(Simple())
RETROACTIVE = register(Retroactive())
