"""The export command lines' failure paths: one `error:` line, no traceback, nothing left.

The path checks run before TensorFlow is imported, so each command here is a
fresh process of a fraction of a second.
"""

import os

import pytest
from conftest import ROOT, run_python

import export


def one_error_line(proc):
    """The command's one stderr line, after checking that it failed without a traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


def unwritable(tmp_path):
    """A directory this process cannot create files in (root ignores permissions, not /sys)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        return str(locked / "models")
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("running as root without /sys: no directory is unwritable")
    return "/sys/kernel/hebbkeras-export-test/models"


def test_export_paths_that_cannot_work(tmp_path):
    model = tmp_path / "run" / "model.keras"
    model.parent.mkdir()
    model.write_bytes(b"not read: the paths are checked first")
    a_file = tmp_path / "file"
    a_file.write_text("")
    version_dir = tmp_path / "models" / "m" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"")
    cases = [
        # (--model, --export_dir, what the line must say)
        (model.parent, tmp_path / "out", [f"model={model.parent} is a directory", f"{model}"]),
        (tmp_path / "none.keras", tmp_path / "out", [f"No model at {tmp_path / 'none.keras'}"]),
        (model, a_file, [f"export_dir={a_file} is a file", "--model_base_path"]),
        (model, a_file / "m", [f"export_dir={a_file / 'm'} lies inside {a_file}, which is a file"]),
        (model, unwritable(tmp_path), ["Cannot write to export_dir=", "pass a directory you can write to"]),
        (model, version_dir, [f"export_dir={version_dir} is itself a SavedModel", f"its parent, {version_dir.parent}"]),
    ]
    for model_arg, export_dir, says in cases:
        proc = run_python(["-m", "export", "--model", str(model_arg), "--export_dir", str(export_dir)])
        line = one_error_line(proc)
        assert all(s in line for s in says), line
        assert "tensorflow" not in proc.stderr.lower()
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["file", "models", "run"]
    assert os.listdir(version_dir) == ["saved_model.pb"]


def test_capacity_wants_a_version_directory(tmp_path):
    base = tmp_path / "models" / "m"
    for v in ("1", "3"):
        (base / v / "assets").mkdir(parents=True)
    cases = [
        (base, [f"saved_model={base} is a model's base directory (versions [1, 3])", f"e.g. {base / '3'}"]),
        (base / "1", ["has no assets/serving.json", "python -m export"]),
        (tmp_path / "none", [f"saved_model={tmp_path / 'none'} does not exist"]),
    ]
    for path, says in cases:
        line = one_error_line(run_python(["-m", "export.capacity", "--saved_model", str(path)]))
        assert all(s in line for s in says), line


@pytest.mark.parametrize("module", ["export", "export.capacity"])
def test_help_exits_0(module):
    proc = run_python(["-m", module, "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--export_dir" in proc.stdout or "--saved_model" in proc.stdout
    assert proc.stderr == ""


def test_export_never_imports_trainers():
    """Serving does not depend on the training code (DESIGN.md), and `import
    export` alone imports no TensorFlow (so the command answers quickly)."""
    code = (
        "import export, sys; assert 'tensorflow' not in sys.modules, 'import export imported TF'; "
        "from export import capacity, exporter, signatures, trained, versions; "
        "import export.__main__; export.export_model; "
        "bad = [m for m in sys.modules if m.startswith('trainers')]; assert not bad, bad"
    )
    proc = run_python(["-c", code], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_model_file_keras_cannot_read(tmp_path):
    """A truncated model.keras (a training run stopped while writing it) is named."""
    model = tmp_path / "model.keras"
    model.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=f"Cannot load model={model} .*Pass a .keras file"):
        export.export_model(str(model), str(tmp_path / "models" / "m"))
    assert os.listdir(tmp_path) == ["model.keras"]
