"""The generated Omniglot-like set: seed, tfds layout, cache, atomic writes, difficulty.

The tfds tests prepare one small set (2 drawers per character: the builder
needs all 50 alphabets and 1,623 characters) through real `tfds.load`; the
difficulty is measured by a numpy 1-NN written here.
"""

import os
import time
import zipfile

import numpy as np
import pytest

from conftest import run_python
from hebbkeras.tasks import handwriting, omniglot, tfds_data

SMALL = handwriting.Settings(seed=5, drawers=2)


def test_the_same_seed_draws_the_same_set_and_another_seed_another():
    images, labels = handwriting.arrays(SMALL, [0, 31])
    again, again_labels = handwriting.arrays(SMALL, [0, 31])
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    other, _ = handwriting.arrays(handwriting.Settings(seed=6, drawers=2), [0, 31])
    n = min(len(images), len(other))
    assert np.mean(images[:n] != other[:n]) > 0.02
    # a character does not depend on which others are drawn with it
    alone, alone_labels = handwriting.arrays(SMALL, [31])
    np.testing.assert_array_equal(alone, images[labels >= alone_labels[0]])
    assert images.dtype == np.uint8 and images.shape[1:] == (105, 105)
    assert set(np.unique(images)) == {0, 255}  # black strokes on white, like Omniglot's PNGs
    ink = np.mean(images == 0, axis=(1, 2))
    assert np.all(ink > 0.003) and np.all(ink < 0.3)


def test_the_layout_is_omniglots():
    rows = handwriting.layout(SMALL.seed)
    background = [r for r in rows if r[0] == "background"]
    evaluation = [r for r in rows if r[0] == "evaluation"]
    assert (len(background), len(evaluation)) == (30, 20)
    assert sum(r[3] for r in background) == 964 and sum(r[3] for r in evaluation) == 659
    firsts = [r[2] for r in rows]
    assert firsts == list(np.cumsum([0] + [r[3] for r in rows[:-1]]))
    assert len({r[1] for r in rows}) == 50


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    start = time.time()
    zips = handwriting.prepare(data_dir, SMALL)
    return data_dir, zips, time.time() - start


def read(data_dir, split):
    import tensorflow_datasets as tfds

    ds = tfds.load("omniglot", split=split, data_dir=data_dir, download=False)
    rows = list(tfds.as_numpy(ds))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_tfds_serves_the_drawings_with_omniglots_splits_labels_and_alphabets(prepared):
    import tensorflow_datasets as tfds

    data_dir, _, _ = prepared
    info = tfds.builder("omniglot", data_dir=data_dir).info
    assert info.features["label"].num_classes == 1623
    assert info.features["alphabet"].num_classes == 50
    train, test = read(data_dir, "train"), read(data_dir, "test")
    assert len(train["label"]) == 964 * 2 and len(test["label"]) == 659 * 2
    assert set(train["label"]) == set(range(964)) and set(test["label"]) == set(range(964, 1623))
    for split in (train, test):
        assert split["image"].shape[1:] == (105, 105, 3) and split["image"].dtype == np.uint8
    train_alphabets = {info.features["alphabet"].int2str(a) for a in train["alphabet"]}
    test_alphabets = {info.features["alphabet"].int2str(a) for a in test["alphabet"]}
    assert len(train_alphabets) == 30 and len(test_alphabets) == 20
    assert not train_alphabets & test_alphabets
    # every image is the drawing of its label (the order tfds serves is its own)
    drawn, labels = handwriting.arrays(SMALL, [30, 49])
    for image, label, char_id, alphabet in zip(test["image"], test["label"],
                                               test["alphabet_char_id"], test["alphabet"]):
        if label in labels:
            candidates = drawn[labels == label]
            assert any(np.array_equal(image[..., 0], c) for c in candidates)
            assert np.array_equal(image[..., 0], image[..., 2])
            name = info.features["label"].int2str(label)
            assert name == f"{info.features['alphabet'].int2str(alphabet)}_{char_id}"
    small1 = read(data_dir, "small1")
    assert set(small1["label"]) <= set(range(964)) and len(set(small1["alphabet"])) == 5


def test_the_trainers_loader_reads_the_prepared_set_offline(prepared):
    data_dir, _, _ = prepared
    images, labels = omniglot.load_omniglot("test", 31, data_dir=data_dir, download=False)
    assert images.shape == (659 * 2, 31, 31) and labels.min() == 964


def test_a_second_call_returns_the_cached_set_without_writing(prepared):
    data_dir, zips, took = prepared
    files = [os.path.join(zips, f) for f in sorted(os.listdir(zips))]
    prepared_files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(data_dir, "omniglot"))
                      for f in fs]
    before = {f: os.stat(f).st_mtime_ns for f in files + prepared_files}
    start = time.time()
    assert handwriting.prepare(data_dir, SMALL) == zips
    assert time.time() - start < min(1.0, took / 5)
    assert {f: os.stat(f).st_mtime_ns for f in files + prepared_files} == before
    assert os.path.basename(zips) == SMALL.key()
    assert handwriting.Settings(seed=5, drawers=3).key() != SMALL.key()
    assert sorted(os.listdir(data_dir)) == ["handwriting", "omniglot"]  # no temporary left


def test_other_settings_replace_a_generated_set_but_never_another_omniglot(tmp_path, monkeypatch):
    prepared = []

    def load_split(source, split, data_dir, download, manual_dir):  # tfds's part, faked
        os.makedirs(os.path.join(data_dir, "omniglot", "3.0.0"))
        with open(os.path.join(data_dir, "omniglot", "3.0.0", "from"), "w") as f:
            f.write(manual_dir)
        prepared.append(manual_dir)

    monkeypatch.setattr(tfds_data, "load_split", load_split)
    other = handwriting.Settings(seed=5, drawers=2, translate=3.0)
    made = set()  # zips stay cached for every settings used
    for settings, calls in ((SMALL, 1), (SMALL, 1), (other, 2), (SMALL, 3)):
        zips = handwriting.prepare(str(tmp_path / "d"), settings)
        made.add(settings.key())
        assert len(prepared) == calls and prepared[-1] == zips
        assert open(tmp_path / "d" / "omniglot" / "3.0.0" / "from").read() == zips
        assert sorted(os.listdir(tmp_path / "d")) == ["handwriting", "omniglot"]
        assert sorted(os.listdir(tmp_path / "d" / "handwriting")) == sorted(made)
    monkeypatch.undo()
    foreign = tmp_path / "real" / "omniglot" / "3.0.0"
    foreign.mkdir(parents=True)
    (foreign / "dataset_info.json").write_text("{}")
    with pytest.raises(FileExistsError, match="did not make"):
        handwriting.prepare(str(tmp_path / "real"), SMALL)
    assert os.listdir(tmp_path / "real") == ["omniglot"]
    assert (foreign / "dataset_info.json").read_text() == "{}"


def test_the_zips_hold_omniglots_folders_and_file_names(prepared):
    _, zips, _ = prepared
    with zipfile.ZipFile(os.path.join(zips, "images_evaluation.zip")) as z:
        names = z.namelist()
    assert len(names) == 659 * 2
    top, alphabet, character, image = names[0].split("/")
    assert top == "images_evaluation" and character.startswith("character")
    label, drawer = image[:-4].split("_")
    assert len(label) == 4 and 965 <= int(label) <= 1623 and drawer in ("01", "02")
    listed = open(os.path.join(zips, tfds_data.LISTED_CHECKSUMS)).read().split("\n")
    assert len([line for line in listed if line]) == 4


def test_an_interrupted_generation_leaves_no_set(tmp_path, monkeypatch):
    settings = handwriting.Settings(seed=8, drawers=2)
    real, calls = handwriting._png, []

    def interrupted(image):
        calls.append(1)
        if len(calls) > 50:
            raise KeyboardInterrupt
        return real(image)

    monkeypatch.setattr(handwriting, "_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        handwriting.generate(str(tmp_path), settings)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(handwriting, "_png", real)
    path = handwriting.generate(str(tmp_path), settings)
    assert os.listdir(tmp_path) == [settings.key()]
    with zipfile.ZipFile(os.path.join(path, "images_background.zip")) as z:
        assert len(z.namelist()) == 964 * 2 and z.testzip() is None
    again = handwriting.generate(str(tmp_path / "again"), settings)  # byte for byte
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read(), name


def test_zips_without_their_checksums_are_refused_as_not_omniglot(prepared, tmp_path):
    _, zips, _ = prepared
    bare = tmp_path / "zips"
    bare.mkdir()
    for name in handwriting.ZIPS.values():
        os.symlink(os.path.join(zips, f"{name}.zip"), bare / f"{name}.zip")
    with pytest.raises(tfds_data.DataUnavailableError, match="wrong checksum"):
        omniglot.load_omniglot("test", data_dir=str(tmp_path / "tfds"), manual_dir=str(bare))


def pixel_nearest_neighbour(images, labels, episodes, seed=0, ways=5):
    """5-way 1-shot accuracy of the nearest support image (Euclidean, raw pixels)."""
    rng = np.random.default_rng(seed)
    flat = images.reshape(len(images), -1).astype(np.float64)
    classes = np.unique(labels)
    correct = 0
    for _ in range(episodes):
        chosen = rng.choice(classes, ways, replace=False)
        answer = rng.integers(ways)
        support, query = [], None
        for k, c in enumerate(chosen):
            pair = rng.choice(np.flatnonzero(labels == c), 2, replace=False)
            support.append(flat[pair[0]])
            if k == answer:
                query = flat[pair[1]]
        distances = [np.sum((s - query) ** 2) for s in support]
        correct += int(np.argmin(distances) == answer)
    return correct / episodes


def test_pixels_find_a_small_set_hard_and_the_drawers_make_it_so():
    settings = handwriting.Settings(seed=1, drawers=6)
    images, labels = handwriting.arrays(settings, [30, 31, 32, 33, 34, 35])
    x = omniglot.preprocess(images, 31).numpy()
    hard = pixel_nearest_neighbour(x, labels, 400)
    assert 0.25 < hard < 0.65, hard
    still = handwriting.Settings(seed=1, drawers=6, translate=0, rotate=0, scale=0, shear=0,
                                 jitter=0, width=(3, 3))
    images, labels = handwriting.arrays(still, [30, 31, 32, 33, 34, 35])
    easy = pixel_nearest_neighbour(omniglot.preprocess(images, 31).numpy(), labels, 400)
    assert easy > 0.97, easy  # same pen, no distortion: every drawing identical


def test_the_command_line_checks_its_flags(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        handwriting.main(["--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--data_dir", "--seed", "--drawers", "--translate", "--width", "--zips_only"):
        assert flag in help_text
    for bad, message in ((["--width", "3", "2"], "--width needs 1 <= MIN <= MAX"),
                         (["--jitter", "nan"], "--jitter must be a finite number")):
        with pytest.raises(SystemExit) as done:
            handwriting.main(["--data_dir", str(tmp_path)] + bad)
        assert done.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "omniglot").mkdir()  # someone else's omniglot
    assert handwriting.main(["--data_dir", str(tmp_path), "--drawers", "2"]) == 2
    assert "error: " in capsys.readouterr().err and os.listdir(tmp_path) == ["omniglot"]
    result = run_python(["-m", "hebbkeras.tasks.handwriting", "--data_dir", str(tmp_path),
                         "--drawers", "1"])  # the module's entry point, in a fresh process
    assert result.returncode == 2 and "error: --drawers must be at least 2" in result.stderr


@pytest.mark.slow
def test_pixel_1nn_on_the_full_held_out_alphabets_is_omniglots():
    from trainers.omniglot import wilson_interval

    images, labels = handwriting.arrays(handwriting.Settings(), range(30, 50))
    x = omniglot.preprocess(images, 31).numpy()
    accuracy = pixel_nearest_neighbour(x, labels, 2000)
    low, high = wilson_interval(round(accuracy * 2000), 2000)
    assert 0.35 <= low and high <= 0.55, (accuracy, low, high)


@pytest.mark.slow
def test_a_small_conv_net_learns_the_held_out_alphabets_in_minutes():
    """The learnability check of benchmarks.handwriting on arrays drawn here (180 s)."""
    from benchmarks.handwriting import episodes, nearest_support_accuracy, train_prototypical

    settings = handwriting.Settings()
    train = handwriting.arrays(settings, range(0, 30))
    test = handwriting.arrays(settings, range(30, 50))
    train_x, test_x = (omniglot.preprocess(x, 31).numpy() for x in (train[0], test[0]))
    model, _ = train_prototypical(train_x, train[1], 180, ways=20, queries=5, seed=0)
    features = model.predict(test_x[..., None], batch_size=1024, verbose=0)
    support, query, answer = episodes(test[1], 1000, 5, seed=0)
    assert nearest_support_accuracy(features, support, query, answer) > 0.9
    assert nearest_support_accuracy(test_x.reshape(len(test_x), -1), support, query, answer) < 0.55
