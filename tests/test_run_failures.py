"""The failure paths a new user hits with the trainers: one clear error, nothing lost."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_python

from trainers import binary, files, loop


def test_mirrored_refuses_devices_that_do_not_exist():
    # Named GPUs that are not there used to hang in an NCCL all-reduce.
    with pytest.raises(loop.RunError) as error:
        loop.make_strategy("mirrored", ("/gpu:0", "/gpu:1"))
    message = str(error.value)
    assert "/gpu:0, /gpu:1 do not exist" in message and "/device:CPU:0" in message
    with pytest.raises(loop.RunError, match="/cpu:7 do not exist"):
        loop.make_strategy("mirrored", ("/cpu:0", "/cpu:7"))
    # Without GPUs and without --devices, mirrored runs on the CPU.
    assert loop.make_strategy("mirrored").num_replicas_in_sync == 1


def test_a_finished_run_is_not_overwritten_unless_asked(tiny_binary, tmp_path):
    binary.run(tiny_binary())
    run_dir = tmp_path / "run"
    before = {n: (run_dir / n).read_bytes() for n in ("model.keras", "episodes.csv", "config.json")}
    events = sorted(os.listdir(run_dir / "tensorboard" / "train"))
    for changed in (tiny_binary(), tiny_binary(eta=0.5)):  # again, or with other settings
        with pytest.raises(loop.RunError, match="holds a finished run.*--overwrite"):
            binary.run(changed)
    assert {n: (run_dir / n).read_bytes() for n in before} == before
    assert sorted(os.listdir(run_dir / "tensorboard" / "train")) == events

    binary.run(tiny_binary(eta=0.5, overwrite=True))
    assert binary.BinaryConfig.from_json((run_dir / "config.json").read_text()).eta == 0.5
    assert len(os.listdir(run_dir / "tensorboard" / "train")) == 1  # the old events are gone


def test_model_saves_are_atomic(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "model.keras"
    files.save_model(model, str(path))
    good = path.read_bytes()

    def interrupted(self, filepath, *args, **kwargs):  # a second Ctrl-C in the middle of writing
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.save_model(model, str(path))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["model.keras"]  # the temporary file is gone too


def test_unusable_run_dirs_are_named(tiny_binary, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    cases = {
        str(tmp_path / "file"): "is a file, not a directory",
        str(tmp_path / "file" / "sub"): "cannot be written",
        "/proc/hebbkeras-run": "cannot be written",  # not writable, even as root
        " ": "run_dir is empty",
    }
    for run_dir, message in cases.items():
        with pytest.raises(ValueError, match=message):
            binary.run(tiny_binary(run_dir=run_dir))


class PoisonedTask(binary.BinaryTask):
    """The binary task whose targets become NaN from training step `step` on."""

    step = 5

    def dataset(self, config, input_context=None, start=0):
        def poison(index, batch):
            x, target = batch
            bad = start // config.batch_size + index >= self.step - 1
            return x, tf.where(bad, np.nan, target)

        return super().dataset(config, input_context, start).enumerate().map(poison)


def test_a_loss_that_turns_nan_stops_the_run_and_keeps_the_last_good_backup(tiny_binary, tmp_path):
    config = tiny_binary()
    with pytest.raises(loop.RunError, match="loss became nan at episode 10"):
        loop.run(PoisonedTask(config))
    run_dir = tmp_path / "run"
    assert not (run_dir / "model.keras").exists() and not (run_dir / "summary.json").exists()
    assert (run_dir / "backup").exists()
    # The backup holds the weights after epoch 2 (4 steps), all finite.
    model = binary.BinaryTask(config).model()
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    assert files.restore_backup(model, str(run_dir / "backup"))[0] == 2
    assert int(model.optimizer.iterations.numpy()) == 4
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_help_exits_0_and_start_up_noise_is_hidden():
    result = run_python(["-m", "trainers.binary", "--help"], env={"TF_CPP_MIN_LOG_LEVEL": None})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--num_patterns" in result.stdout and "Units per item" in result.stdout
    for noise in ("cuInit", "I0000", "oneDNN", "Traceback"):
        assert noise not in result.stderr


def test_a_user_error_ends_in_one_error_line(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_python(["-m", "trainers.binary", f"--run_dir={tmp_path / 'file'}",
                         "--pattern_size=8"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: run_dir ")
    assert "Traceback" not in result.stderr
