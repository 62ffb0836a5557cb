"""The package: pyproject.toml's declarations, and a wheel that works once installed.

The slow test does what a user does: build an sdist and a wheel from it, install
the wheel into a fresh virtual environment, and, from a directory outside the
repository, train a plastic network on the fused path with the native kernels
(compiled from the installed C++ source) and reload it from a .keras file.
"""

import ast
import fnmatch
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pyproject():
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def static_version():
    """`__version__` as setuptools' `attr:` reads it without importing the
    package: the one top-level assignment of a string literal."""
    tree = ast.parse((REPO / "hebbkeras" / "__init__.py").read_text())
    values = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
    ]
    assert len(values) == 1, "hebbkeras/__init__.py must assign __version__ exactly once"
    assert isinstance(values[0], ast.Constant) and isinstance(values[0].value, str), (
        "__version__ must be a plain string literal, so that building reads it "
        "without importing hebbkeras (and TensorFlow)"
    )
    return values[0].value


def test_version_has_one_source():
    import hebbkeras

    config = pyproject()
    assert "version" in config["project"]["dynamic"]
    assert "version" not in config["project"], "the version is read from hebbkeras.__version__"
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hebbkeras.__version__"}
    assert static_version() == hebbkeras.__version__


def test_the_license_is_apache_2_0_and_declared():
    """The LICENSE file is the Apache License 2.0 and pyproject declares it (PEP 639)."""
    text = (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    config = pyproject()
    assert config["project"]["license"] == "Apache-2.0"
    assert config["project"]["license-files"] == ["LICENSE"]
    assert "setuptools>=77" in config["build-system"]["requires"]  # the first with PEP 639


def test_wheel_holds_the_library_and_its_data_files():
    """Every package under hebbkeras/ is found, nothing else is, and every
    non-Python file there (the kernels' C++ source) is declared package data."""
    import hebbkeras.kernels.native

    setuptools_config = pyproject()["tool"]["setuptools"]
    include = setuptools_config["packages"]["find"]["include"]
    top = [d for d in REPO.iterdir() if (d / "__init__.py").exists()]  # hebbkeras, trainers, ...
    packages = [
        ".".join(init.parent.relative_to(REPO).parts)
        for d in top for init in d.rglob("__init__.py")
    ]
    assert {"hebbkeras", "trainers", "export"} <= set(packages), packages
    found = [p for p in packages if any(fnmatch.fnmatchcase(p, pat) for pat in include)]
    assert "hebbkeras.kernels.native" in found
    assert all(p == "hebbkeras" or p.startswith("hebbkeras.") for p in found), found

    declared = setuptools_config["package-data"]
    data = [
        f for f in (REPO / "hebbkeras").rglob("*")
        if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts
    ]
    assert data, "expected the native kernels' source under hebbkeras/"
    for f in data:
        package = ".".join(f.parent.relative_to(REPO).parts)
        patterns = declared.get(package, []) + declared.get("*", [])
        assert any(fnmatch.fnmatchcase(f.name, pat) for pat in patterns), (
            f"{f.relative_to(REPO)} is not declared in [tool.setuptools.package-data]"
        )
    # The file the native loader compiles is one of those, found next to the module.
    assert Path(hebbkeras.kernels.native._SOURCE).resolve() in {f.resolve() for f in data}


# Runs in the fresh environment, from a directory outside the repository:
# `python user.py train DIR` or `python user.py reload DIR`.
USER_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import keras
    import tensorflow as tf
    import hebbkeras
    from hebbkeras.kernels import fused, native

    mode, out = sys.argv[1], sys.argv[2]
    print("hebbkeras from", hebbkeras.__file__)
    assert hebbkeras.__file__.startswith(sys.prefix + os.sep), hebbkeras.__file__
    x = np.random.default_rng(0).normal(size=(2, 12, 3)).astype("float32")
    if mode == "reload":  # a fresh process: the classes register on import
        model = keras.saving.load_model(os.path.join(out, "model.keras"))
        np.testing.assert_allclose(model.predict(x, verbose=0),
                                   np.load(os.path.join(out, "y.npy")), rtol=1e-6)
        print("reloaded")
        sys.exit()

    # Count the fused kernel's calls and each native op it runs.
    counts = {}
    def counting(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapped
    class CountingOps:
        def __init__(self, ops):
            self.ops = ops
        def __getattr__(self, name):
            return counting(name, getattr(self.ops, name))
    load = native.load
    native.load = lambda: (lambda ops: ops and CountingOps(ops))(load())
    fused.plastic_sequence = counting("plastic_sequence", fused.plastic_sequence)
    assert native.available(tf.float32), "the native kernels did not build (see the warning)"
    assert os.path.dirname(native._SOURCE) == os.path.dirname(native.__file__)

    inputs = keras.Input((12, 3))
    layer = hebbkeras.PlasticRNN(6, input_mode="dense", eta=0.1, trainable_eta=True,
                                 alpha_initializer=keras.initializers.RandomNormal(0, 0.5),
                                 w_initializer=keras.initializers.RandomNormal(0, 0.5))
    model = keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)))
    y = np.ones((2, 2), "float32")

    # The fused native gradients equal the cell loop's (plain Keras ops).
    def gradients(use_fused):
        layer.use_fused = use_fused
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum((model(x) - y) ** 2)
            return loss, tape.gradient(loss, model.trainable_weights)
        return step()
    loss_f, g_f = gradients(True)
    traced = dict(counts)  # the fused path ran the native ops, forward and backward
    assert set(traced) == {"plastic_sequence", "hebbkeras_trace_update",
                           "hebbkeras_trace_backward"}, traced
    loss_c, g_c = gradients(False)
    assert counts == traced, counts  # the reference ran none of them
    np.testing.assert_allclose(loss_f, loss_c, rtol=1e-5)
    for a, b, v in zip(g_f, g_c, model.trainable_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=v.path)
    layer.use_fused = True

    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = [w.numpy().copy() for w in (layer.w, layer.alpha, layer.eta)]
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for old, new in zip(before, (layer.w, layer.alpha, layer.eta)):
        assert not np.allclose(old, new.numpy()), new.path  # the step trained it
    # fit's train step traced the fused path and the native ops again
    assert all(counts[k] > traced[k] for k in traced), (traced, counts)
    model.save(os.path.join(out, "model.keras"))
    np.save(os.path.join(out, "y.npy"), model.predict(x, verbose=0))
    print("trained")
    """
)

# Building must not import the package: keras and tensorflow fail on import here.
SHIM = "raise ImportError('imported while building the package')\n"


def run(command, **kwargs):
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def build_requirements():
    return pyproject()["build-system"]["requires"]


def has_build_tools():
    """Whether this environment meets the build requirements, so that building
    needs no download."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    def installed(requirement):
        requirement = Requirement(requirement)
        try:
            return requirement.specifier.contains(version(requirement.name), prereleases=True)
        except PackageNotFoundError:
            return False

    # setuptools makes wheels itself from 70.1, with the `wheel` package before.
    return all(map(installed, build_requirements())) and (
        installed("setuptools>=70.1") or installed("wheel"))


@pytest.mark.slow
def test_wheel_installs_and_trains_outside_the_repository(tmp_path):
    # A copy of the tree, so that building leaves nothing in the checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "models", "build", "dist", "*.egg-info", "__pycache__",
        ".pytest_cache"))
    shim = tmp_path / "shim"
    for name in ("keras", "tensorflow"):
        (shim / name).mkdir(parents=True)
        (shim / name / "__init__.py").write_text(SHIM)
    path = [str(shim)]
    if not has_build_tools():  # fetch what build isolation would
        run([sys.executable, "-m", "pip", "install", "-q", "--target",
             str(tmp_path / "buildtools"), *build_requirements()])
        path.append(str(tmp_path / "buildtools"))
    build_env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))

    # sdist from the tree, then the wheel from the sdist: the sdist is complete.
    dist = tmp_path / "dist"
    run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(dist)],
        cwd=source, env=build_env)
    (sdist,) = dist.glob("hebbkeras-*.tar.gz")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
         str(sdist)], env=build_env, cwd=tmp_path)
    (wheel,) = dist.glob("hebbkeras-*.whl")
    import hebbkeras

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"hebbkeras-{hebbkeras.__version__}.dist-info/METADATA").decode()
    assert f"Version: {hebbkeras.__version__}\n" in metadata
    assert "License-Expression: Apache-2.0\n" in metadata
    assert f"hebbkeras-{hebbkeras.__version__}.dist-info/licenses/LICENSE" in names
    assert {f"hebbkeras/kernels/native/{n}" for n in ("hebb_ops.cc", "modulated_ops.cc", "blocks.h")} <= names
    assert {n.split("/")[0] for n in names} == {
        "hebbkeras", f"hebbkeras-{hebbkeras.__version__}.dist-info"}, names

    # A fresh environment that sees this one's packages (TensorFlow is 600 MB)
    # behind its own site-packages, where the wheel goes.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])  # this pip installs
    python = venv / "bin" / "python"
    fresh_site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                     ).stdout.strip()
    ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    (Path(fresh_site) / "project_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    # Without --no-deps: the requirements declared for the library and the tests
    # ([test] includes [tensorflow] and [datasets]) must be met by the tested versions.
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
         f"{wheel}[test]"])

    user = tmp_path / "user"
    user.mkdir()
    (user / "user.py").write_text(USER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HEBBKERAS_NATIVE")}
    env.update(HEBBKERAS_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow")
    out = run([str(python), "user.py", "train", str(user)], cwd=user, env=env).stdout
    assert "trained" in out and f"hebbkeras from {fresh_site}" in out, out
    assert list((tmp_path / "cache").glob("hebb_ops-*.so")), "no kernels built from the wheel"
    out = run([str(python), "user.py", "reload", str(user)], cwd=user, env=env).stdout
    assert "reloaded" in out, out
