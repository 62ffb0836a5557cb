"""Issue 24, items 3-6: every mistake ends in one `error:` line (exit 2), Ctrl-C at any
moment in one line (exit 130), never a traceback.

Commands run in fresh processes where the path to the error is the command line's
(flag parsing, the first seconds of a command); the rest call the function the command
calls, which raises the ValueError that `hebbcli.run` prints as the error line.
"""

import json
import os
import signal
import time

import pytest
from conftest import run_python, start_python

from trainers import files


def one_error_line(proc, *says):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for text in says:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command, says", [
    (["-m", "trainers.binary", "--model=lstmx"], ["--model=lstmx", "plastic|rnn|lstm", "--help"]),
    (["-m", "trainers.omniglot", "--ways=x"], ["--ways=x", "invalid literal"]),
    (["-m", "export", "--model=m.keras"], ["--export_dir must have a value"]),
])
def test_bad_flag_values_are_error_lines_with_exit_2(command, says):
    """absl said `FATAL Flags parsing error` with exit status 1."""
    one_error_line(run_python(command), *says)


def test_omniglot_help_says_what_its_flags_do_for_omniglot():
    result = run_python(["-m", "trainers.omniglot", "--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    jit = result.stdout[result.stdout.index("--[no]jit_compile"):][:300]
    assert "Compile the training step with XLA" in jit
    assert "fused kernel" not in jit and "--model rnn" not in jit


@pytest.mark.parametrize("command", ["trainers.maze", "export"])
@pytest.mark.parametrize("after", [0.3, 1.5])
def test_ctrl_c_in_the_first_seconds_is_one_line_and_exit_130(tmp_path, command, after):
    """While TensorFlow is imported, before the command's own handler exists."""
    (tmp_path / "model.keras").write_bytes(b"read only after TensorFlow's import")
    flags = {"trainers.maze": ["--verbose=0", f"--run_dir={tmp_path / 'run'}"],
             "export": [f"--model={tmp_path / 'model.keras'}", f"--export_dir={tmp_path / 'm'}"]}
    proc = start_python(["-m", command, *flags[command]])
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted"), err


CTRL_C_IN_A_CALLBACK = """
import os, signal, sys
import hebbcli

def report(error):  # what C's PyErr_Print does with the error it was handed
    sys.excepthook(type(error), error, error.__traceback__)

def main(argv):
    try:  # Ctrl-C lands while C code has called back into Python ...
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10**6):
            pass
    except KeyboardInterrupt:  # ... the call returns with the error set: a SystemError,
        try:
            raise SystemError("returned a result with an exception set")
        except SystemError as error:
            report(error)  # ... which the C code prints, as TensorFlow's did
    print("went on", file=sys.stderr)
    try:
        raise RuntimeError("not from Ctrl-C")
    except RuntimeError as error:
        report(error)  # another error's report still shows
    raise KeyboardInterrupt

hebbcli.run(main)
"""


def test_a_ctrl_c_that_c_code_reports_prints_no_traceback(tmp_path):
    """The export's Ctrl-C test once failed this way under load: the interrupt landed in
    TensorFlow's nest flattening (C++ importing a module), which printed a SystemError's
    traceback before the command's own line."""
    script = tmp_path / "callback.py"
    script.write_text(CTRL_C_IN_A_CALLBACK)
    proc = run_python([str(script)])
    assert proc.returncode == 130, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "went on", proc.stderr
    assert "SystemError" not in proc.stderr and "RuntimeError: not from Ctrl-C" in proc.stderr
    assert lines[-1].startswith("interrupted"), proc.stderr


def test_ctrl_c_while_the_exporter_imports_tensorflow_is_the_early_line(tmp_path):
    """The exporter imports TensorFlow after its Ctrl-C handler is in place (it checks its
    paths first); a Ctrl-C in that import once ended the process by SIGINT (status -2 in
    CI) after printing TensorFlow's start-up noise. A stand-in `tensorflow` that is
    interrupted while it imports: the early handler's one line, status 130."""
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os, signal, sys, time\n"
        "print('E0000 start-up noise', file=sys.stderr)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(30)\n")
    (tmp_path / "model.keras").write_bytes(b"never read")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = start_python(["-m", "export", f"--model={tmp_path / 'model.keras'}",
                         f"--export_dir={tmp_path / 'm'}"],
                        env={"PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), root])})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert err.strip().splitlines() == ["interrupted (Ctrl-C)"], err


def test_omniglot_checks_ways_against_the_held_out_classes_before_training(tmp_path):
    from test_omniglot import mock_omniglot, small_config, tfds_splits

    from trainers import omniglot as trainer

    config = small_config(tmp_path, ways=25)  # 40 training classes, 20 held out
    with mock_omniglot(tfds_splits()):
        with pytest.raises(ValueError) as error:
            trainer.train(config, trainer.OmniglotData(config))
    message = str(error.value)
    assert "held-out classes" in message and "ways=25 needs at least 25 classes" in message
    assert not os.path.exists(tmp_path / "run")  # refused before the run started


def test_cifar_split_names_name_the_flag():
    from trainers import cifar

    with pytest.raises(ValueError, match=r"eval_split='tset': CIFAR-10 has the splits train and test"):
        cifar.CifarConfig(eval_split="tset").validate()
    cifar.CifarConfig(eval_split="test[:100]", train_split="train[:80%]+test[:10]").validate()


def test_empty_settings_are_refused():
    from trainers import cifar

    with pytest.raises(ValueError, match="train_split is empty"):
        cifar.CifarConfig(train_split=" ").validate()


def test_maze_compare_refuses_a_run_twice_and_a_figure_that_is_a_directory(tmp_path):
    from test_maze_trainer import fake_run

    from trainers import maze

    fake_run(tmp_path / "a", "lstm", [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="names the run .* twice"):
        maze.compare([str(tmp_path / "a"), f"{tmp_path}/./a/"], str(tmp_path / "c.png"))
    with pytest.raises(ValueError, match=f"figure={tmp_path} is a directory"):
        maze.compare([str(tmp_path / "a")], str(tmp_path))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="which is a file"):
        maze.compare([str(tmp_path / "a")], str(tmp_path / "file" / "c.png"))
    assert sorted(os.listdir(tmp_path)) == ["a", "file"]


def test_export_refuses_a_maze_agent(tmp_path):
    import export
    from trainers import maze

    agent = maze.build_agent(maze.MazeConfig(size=5, episode_length=4, units=4))
    agent.compile(optimizer="adam")
    path = tmp_path / "run" / "model.keras"
    path.parent.mkdir()
    agent.save(str(path))
    with pytest.raises(ValueError, match="is a MazeAgent, a Keras model without fixed inputs"):
        export.export_model(str(path), str(tmp_path / "models"))
    assert not (tmp_path / "models").exists()


def test_capacity_refuses_an_omniglot_export(tmp_path):
    from export import capacity

    version = tmp_path / "models" / "omniglot" / "1"
    (version / "assets").mkdir(parents=True)
    (version / "assets" / "serving.json").write_text(json.dumps({"signature": "classify"}))
    with pytest.raises(ValueError, match="is a few-shot classifier .*measures the complete"):
        capacity.check_version_dir(str(version))


def test_check_output_file():
    with pytest.raises(ValueError, match="figure is empty"):
        files.check_output_file("figure", "")
    files.check_output_file("figure", os.path.join("new", "dir", "f.png"))  # made on writing
