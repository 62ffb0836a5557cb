"""An offline Omniglot-like data set: handwriting-like characters drawn from random pen strokes.

Real Omniglot (Lake et al. 2015) needs a download. This module draws a
stand-in with the same layout and serves it through tfds's own `omniglot`
builder (version 3.0.0), so `python -m trainers.omniglot` reads it unchanged:

    50 alphabets: 30 background (tfds `train`, 964 characters) and 20
    evaluation (tfds `test`, 659 characters); every character drawn by
    `drawers` (20) drawers; 105 x 105 black strokes on white.

How a character comes about (all of it a pure function of the seed):

    alphabet   a stroke vocabulary (5-10 primitives: lines, arcs, hooks,
               S-curves, loops, zigzags, with the alphabet's curvature), a
               mean stroke count, how often strokes join, how strokes are
               oriented (free, or in steps of 45 or 90 degrees)
    character  1-6 primitives of its alphabet, each scaled, turned, mirrored
               and placed (joined to an earlier stroke or free), normalised
               to a unit box
    drawer     a persistent style per (alphabet, drawer): pen width, slant,
               size; per image an affine map A (rotation, scale, shear) and a
               translation t, jitter of every stroke and control point:

                   p' = A (s p + e_stroke + e_point) + c + t,    e ~ N(0, jitter^2)

               then Chaikin corner cutting (smooth strokes) and a pen of
               width w drawn with PIL.

The difficulty for pixels comes from the drawers (translation, rotation,
scale, shear, pen width, jitter), which a conv net learns to ignore, not from
characters that look alike: see docs/omniglot.md for the measured pixel 1-NN
accuracy and a conv net's.

`prepare(data_dir)` writes the four zips tfds expects (cached by the
settings and `VERSION`, written atomically) and prepares `omniglot/3.0.0` in
`data_dir` through `hebbkeras.tasks.tfds_data.load_split`; afterwards

    python -m trainers.omniglot --data_dir DATA_DIR --nodownload

trains on it. Command line: `python -m hebbkeras.tasks.handwriting --help`.
"""

import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile

import numpy as np

from hebbkeras.tasks import tfds_data

VERSION = 1  # of the drawing procedure: part of the cache key
SIDE = 105
BACKGROUND, EVALUATION = 30, 20  # alphabets, as in Omniglot
CHARACTERS = {"background": 964, "evaluation": 659}
ZIPS = {"background": "images_background", "evaluation": "images_evaluation",
        "small1": "images_background_small1", "small2": "images_background_small2"}
SMALL = {"small1": range(0, 5), "small2": range(5, 10)}  # background alphabets in each
URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
MARKER = ".handwriting.json"  # in a prepared omniglot/ folder: the settings' key


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a generated set depends on (with `VERSION`, its cache key).

    seed: every random choice derives from it.
    drawers: images per character.
    size: the character's mean extent in pixels (of 105).
    translate: uniform shift of a drawing, in pixels, each way.
    rotate: standard deviation of a drawing's rotation, degrees.
    scale: standard deviation of its log scale.
    shear: standard deviation of its shear (plus the drawer's slant).
    jitter: standard deviation of the shift of each stroke and each control
        point, in pixels.
    width: the range of pen widths in pixels (each drawer has one).
    """

    seed: int = 0
    drawers: int = 20
    size: float = 62.0
    translate: float = 6.0
    rotate: float = 8.0
    scale: float = 0.1
    shear: float = 0.12
    jitter: float = 1.6
    width: tuple = (2, 4)

    def key(self):
        """A short hash of the settings and `VERSION`."""
        text = json.dumps({"version": VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------ layout


def layout(seed=0):
    """`[(split, alphabet name, first label, characters)]` of the 50 alphabets.

    Character counts per alphabet are random (14-55, as in Omniglot) and sum
    to 964 (background) and 659 (evaluation); labels run 0 .. 1622 across both.
    """
    rng = np.random.default_rng([seed, 7])
    rows, label = [], 0
    for split, count in (("background", BACKGROUND), ("evaluation", EVALUATION)):
        sizes = _partition(rng, CHARACTERS[split], count, 14, 55)
        for i, n in enumerate(sizes):
            name = f"{split.capitalize()}_{i + 1:02d}"
            rows.append((split, name, label, n))
            label += n
    return rows


def _partition(rng, total, parts, low, high):
    sizes = np.full(parts, low)
    while sizes.sum() < total:
        i = rng.integers(parts)
        if sizes[i] < high:
            sizes[i] += 1
    return [int(s) for s in sizes]


# ------------------------------------------------------------------ strokes


def _primitive(rng, curvature):
    """One stroke of an alphabet's vocabulary: `(points (m, 2), smooth, closed)`, chord ~ 1."""
    kind = rng.choice(["line", "arc", "hook", "scurve", "loop", "zigzag"],
                      p=_kind_weights(curvature))
    if kind == "line":
        return np.array([[-0.5, 0.0], [0.5, 0.0]]), False, False
    if kind == "arc":
        sweep = np.radians(rng.uniform(70, 100 + 200 * curvature))
        t = np.linspace(-sweep / 2, sweep / 2, 6)
        pts = np.stack([np.sin(t), 1 - np.cos(t)], 1)
        return _unit_chord(pts), True, False
    if kind == "hook":
        bend = rng.uniform(0.3, 0.9) * rng.choice([-1, 1])
        pts = np.array([[-0.5, 0], [0.3, 0], [0.5, bend * 0.5], [0.3, bend]])
        return pts, rng.random() < curvature, False
    if kind == "scurve":
        a = rng.uniform(0.2, 0.5)
        pts = np.array([[-0.5, 0], [-0.25, a], [0, 0], [0.25, -a], [0.5, 0]])
        return pts, True, False
    if kind == "loop":
        t = np.linspace(0, 2 * np.pi, 9)[:-1]
        ecc = rng.uniform(0.4, 1.0)
        return np.stack([0.5 * np.cos(t), 0.5 * ecc * np.sin(t)], 1), True, True
    turns = rng.integers(2, 4)
    xs = np.linspace(-0.5, 0.5, turns + 2)
    ys = np.where(np.arange(turns + 2) % 2, rng.uniform(0.2, 0.5), 0.0)
    return np.stack([xs, ys], 1), rng.random() < 0.5 * curvature, False


def _kind_weights(curvature):
    w = np.array([1.5 - curvature, 0.4 + curvature, 0.6, 0.2 + curvature, 0.2 + 0.6 * curvature,
                  0.6 - 0.4 * curvature])
    return w / w.sum()


def _unit_chord(pts):
    chord = pts[-1] - pts[0]
    length = np.hypot(*chord)
    angle = np.arctan2(chord[1], chord[0])
    pts = (pts - (pts[0] + pts[-1]) / 2) @ _rotation(-angle).T
    return pts / length


def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


@dataclasses.dataclass
class Alphabet:
    """The stroke statistics a script's characters share."""

    vocabulary: list
    weights: np.ndarray
    strokes: float   # mean strokes per character
    connect: float   # probability that a stroke starts on an earlier one
    angle_step: float  # orientation quantum in radians (0: free)


def make_alphabet(seed, index):
    """The style of alphabet `index` (0 .. 49)."""
    rng = np.random.default_rng([seed, 1, index])
    curvature = rng.uniform(0, 1)
    vocabulary = [_primitive(rng, curvature) for _ in range(rng.integers(5, 11))]
    weights = rng.dirichlet(np.full(len(vocabulary), 2.0))
    step = rng.choice([0.0, np.pi / 4, np.pi / 2])
    return Alphabet(vocabulary, weights, rng.uniform(1.8, 3.8), rng.uniform(0.2, 0.8), step)


def make_character(alphabet, seed, label):
    """A character: a list of `(points, smooth, closed)` strokes in a box of extent 1."""
    rng = np.random.default_rng([seed, 2, label])
    count = int(np.clip(1 + rng.poisson(alphabet.strokes - 1), 1, 6))
    strokes = []
    for j in range(count):
        pts, smooth, closed = alphabet.vocabulary[rng.choice(len(alphabet.weights),
                                                             p=alphabet.weights)]
        angle = rng.uniform(0, 2 * np.pi)
        if alphabet.angle_step:
            angle = np.round(angle / alphabet.angle_step) * alphabet.angle_step
        mirror = np.diag([1.0, rng.choice([-1.0, 1.0])])
        pts = (pts @ mirror) @ _rotation(angle).T * rng.uniform(0.45, 1.0)
        if strokes and rng.random() < alphabet.connect:
            others = strokes[rng.integers(len(strokes))][0]
            anchor = others[rng.integers(len(others))]
            pts = pts - pts[0 if rng.random() < 0.7 else len(pts) // 2] + anchor
        else:
            pts = pts + rng.uniform(-0.5, 0.5, 2)
        strokes.append((pts, smooth, closed))
    every = np.concatenate([s[0] for s in strokes])
    low, high = every.min(0), every.max(0)
    extent = max(high - low)
    return [((p - (low + high) / 2) / extent, s, c) for p, s, c in strokes]


# ------------------------------------------------------------------ drawing


def _drawer_style(settings, alphabet_index, drawer):
    rng = np.random.default_rng([settings.seed, 3, alphabet_index, drawer])
    low, high = settings.width
    return {"width": int(rng.integers(low, high + 1)), "slant": rng.normal(0, settings.shear),
            "size": np.exp(rng.normal(0, settings.scale))}


def _chaikin(pts, closed, rounds=3):
    for _ in range(rounds):
        nxt = np.roll(pts, -1, 0) if closed else pts[1:]
        cur = pts if closed else pts[:-1]
        q, r = 0.75 * cur + 0.25 * nxt, 0.25 * cur + 0.75 * nxt
        cut = np.stack([q, r], 1).reshape(-1, 2)
        pts = cut if closed else np.concatenate([pts[:1], cut, pts[-1:]])
    return np.concatenate([pts, pts[:1]]) if closed else pts


def draw(character, settings, style, rng):
    """One drawing of `character` by a drawer of `style`: uint8 `(105, 105)`, strokes 0."""
    from PIL import Image, ImageDraw

    s = settings.size * style["size"] * np.exp(rng.normal(0, settings.scale))
    rot = _rotation(np.radians(rng.normal(0, settings.rotate)))
    shear = np.array([[1.0, style["slant"] + rng.normal(0, settings.shear)], [0.0, 1.0]])
    a = rot @ shear
    centre = SIDE / 2 + rng.uniform(-settings.translate, settings.translate, 2)
    image = Image.new("L", (SIDE, SIDE), 255)
    pen = ImageDraw.Draw(image)
    w = style["width"]
    for pts, smooth, closed in character:
        p = s * pts + rng.normal(0, settings.jitter, 2) + rng.normal(0, settings.jitter, pts.shape)
        if smooth:
            p = _chaikin(p, closed)
        elif closed:
            p = np.concatenate([p, p[:1]])
        p = p @ a.T + centre
        xy = [tuple(q) for q in p]
        pen.line(xy, fill=0, width=w, joint="curve")
        for x, y in (xy[0], xy[-1]):
            pen.ellipse([x - w / 2, y - w / 2, x + w / 2, y + w / 2], fill=0)
    return np.asarray(image)


def characters(settings, alphabets=None):
    """Yields `(split, alphabet name, alphabet index, char index, label, images)` per character.

    Args:
        settings: a `Settings`.
        alphabets: indices (0 .. 49; 0 .. 29 background) to draw; default all.
    """
    for index, (split, name, first, count) in enumerate(layout(settings.seed)):
        if alphabets is not None and index not in alphabets:
            continue
        alphabet = make_alphabet(settings.seed, index)
        styles = [_drawer_style(settings, index, d) for d in range(settings.drawers)]
        for c in range(count):
            character = make_character(alphabet, settings.seed, first + c)
            images = [draw(character, settings, styles[d],
                           np.random.default_rng([settings.seed, 4, first + c, d]))
                      for d in range(settings.drawers)]
            yield split, name, index, c, first + c, np.stack(images)


def arrays(settings, alphabets):
    """`(images uint8 (n, 105, 105), labels (n,))` of the given alphabets, without tfds."""
    images, labels = [], []
    for *_, label, drawn in characters(settings, alphabets):
        images.append(drawn)
        labels.append(np.full(len(drawn), label, np.int64))
    return np.concatenate(images), np.concatenate(labels)


# ------------------------------------------------------------------ files


def _png(image):
    """A 1-bit PNG, as Omniglot's (tfds decodes it to three equal channels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image > 127).save(buffer, format="PNG")
    return buffer.getvalue()


def write_zips(directory, settings):
    """Writes the four zips of tfds's `omniglot` builder into `directory`.

    Each zip holds one folder (`images_background/`, ...) of
    `<alphabet>/characterNN/LLLL_DD.png`, `LLLL` the 1-based label (unique
    across zips) and `DD` the drawer, as in Omniglot. The small sets hold
    background alphabets 1-5 and 6-10.
    """
    archives = {k: zipfile.ZipFile(os.path.join(directory, f"{v}.zip"), "w", zipfile.ZIP_STORED)
                for k, v in ZIPS.items()}
    try:
        for split, name, index, c, label, images in characters(settings):
            targets = [split] + [k for k, alphabets in SMALL.items()
                                 if split == "background" and index in alphabets]
            for d, image in enumerate(images):
                data = _png(image)
                for target in targets:
                    path = (f"{ZIPS[target]}/{name}/character{c + 1:02d}/"
                            f"{label + 1:04d}_{d + 1:02d}.png")
                    # a fixed date: the same settings give the same bytes
                    archives[target].writestr(zipfile.ZipInfo(path, (1980, 1, 1, 0, 0, 0)), data)
    finally:
        for archive in archives.values():
            archive.close()
    lines = []
    for stem in ZIPS.values():
        path = os.path.join(directory, f"{stem}.zip")
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        lines.append(f"{URL}{stem}.zip\t{os.path.getsize(path)}\t{digest}\t{stem}.zip\n")
    with open(os.path.join(directory, tfds_data.LISTED_CHECKSUMS), "w") as f:
        f.writelines(lines)


def generate(directory, settings=Settings()):
    """The directory of the zips for `settings`: `directory/<settings.key()>`, made if missing.

    A second call with the same settings returns at once. The zips are
    written into a temporary folder renamed into place when complete, so an
    interrupted generation never leaves a partial set under the final name.

    Returns:
        The path of the folder holding the zips (usable as tfds `manual_dir`).
    """
    final = os.path.join(directory, settings.key())
    if os.path.isdir(final):
        return final
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{settings.key()}.tmp-", dir=directory)
    try:
        write_zips(tmp, settings)
        with open(os.path.join(tmp, "settings.json"), "w") as f:
            json.dump({"version": VERSION, **dataclasses.asdict(settings)}, f, indent=1)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the set from other users
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same set first
            if not os.path.isdir(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def prepare(data_dir, settings=Settings()):
    """Generates the set (cached) and prepares tfds `omniglot/3.0.0` from it in `data_dir`.

    Afterwards `tfds.load("omniglot", data_dir=data_dir)` (and `python -m
    trainers.omniglot --data_dir DATA_DIR --nodownload`) reads it. The zips
    are kept in `data_dir/handwriting/<key>`; `data_dir/omniglot/.handwriting.json`
    (which tfds ignores) records which settings the prepared set holds, so a
    second call returns at once and other settings replace it. tfds prepares
    into a temporary data directory whose `omniglot/` folder, marker
    included, is then moved into place.

    Returns:
        The folder of the zips.

    Raises:
        FileExistsError: `data_dir/omniglot` exists without the marker (real
            Omniglot, say), which is never replaced.
    """
    prepared = os.path.join(data_dir, "omniglot")
    current = _prepared_key(os.path.join(prepared, MARKER))
    if current is None and os.path.exists(prepared):
        raise FileExistsError(
            f"{prepared} holds a tfds omniglot that this generator did not make (real "
            "Omniglot?); it is left alone: give another data directory.")
    zips = generate(os.path.join(data_dir, "handwriting"), settings)
    if current == settings.key():
        return zips
    from hebbkeras.tasks import omniglot  # TensorFlow, only to prepare

    tmp = tempfile.mkdtemp(prefix=".prepare-", dir=data_dir)
    try:
        tfds_data.load_split(omniglot.OMNIGLOT, "test", tmp, download=True, manual_dir=zips)
        with open(os.path.join(tmp, "omniglot", MARKER), "w") as f:
            json.dump({"key": settings.key(), "zips": zips}, f)
        if os.path.exists(prepared):
            os.rename(prepared, os.path.join(tmp, "replaced"))
        os.rename(os.path.join(tmp, "omniglot"), prepared)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return zips


def _prepared_key(marker):
    try:
        with open(marker) as f:
            return json.load(f)["key"]
    except (OSError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------ command line

DISTORTIONS = {  # the float settings, as flags
    "size": "Mean extent of a character in pixels (of 105).",
    "translate": "Largest shift of a drawing, pixels each way (the main pixel-space difficulty).",
    "rotate": "Standard deviation of a drawing's rotation, degrees.",
    "scale": "Standard deviation of a drawing's log scale (and a drawer's).",
    "shear": "Standard deviation of a drawing's shear (and a drawer's slant).",
    "jitter": "Standard deviation of each stroke's and control point's shift, pixels.",
}


def main(argv=None):
    """`python -m hebbkeras.tasks.handwriting`: generate and prepare the set."""
    import argparse
    import time

    d = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m hebbkeras.tasks.handwriting",
        description="Draw an Omniglot-like set of handwriting-like characters (50 alphabets, "
        "1,623 characters, 105 x 105 PNGs) and prepare it as tfds 'omniglot' 3.0.0 in "
        "--data_dir, so that `python -m trainers.omniglot --data_dir DATA_DIR --nodownload` "
        "trains on it. Cached: the same settings return at once.")
    parser.add_argument("--data_dir", required=True,
                        help="TFDS data directory to prepare omniglot/3.0.0 in; the zips go to "
                        "DATA_DIR/handwriting/<key> (usable as --manual_dir).")
    parser.add_argument("--zips_only", action="store_true",
                        help="Only write the four zips (no tfds preparation, no TensorFlow).")
    parser.add_argument("--seed", type=int, default=d.seed, help="Seed of every random choice.")
    parser.add_argument("--drawers", type=int, default=d.drawers,
                        help="Drawings of each character (Omniglot: 20).")
    for name, text in DISTORTIONS.items():
        parser.add_argument(f"--{name}", type=float, default=getattr(d, name), help=text)
    parser.add_argument("--width", type=int, nargs=2, default=list(d.width),
                        metavar=("MIN", "MAX"), help="Range of the drawers' pen widths, pixels.")
    args = parser.parse_args(argv)
    if args.drawers < 2:
        parser.error(f"--drawers must be at least 2 (one support and one query); "
                     f"got {args.drawers}.")
    if not 1 <= args.width[0] <= args.width[1]:
        parser.error(f"--width needs 1 <= MIN <= MAX; got {args.width}.")
    for name in DISTORTIONS:
        if not np.isfinite(getattr(args, name)) or getattr(args, name) < 0:
            parser.error(f"--{name} must be a finite number >= 0; got {getattr(args, name)}.")
    settings = Settings(args.seed, args.drawers, args.size, args.translate, args.rotate,
                        args.scale, args.shear, args.jitter, tuple(args.width))
    start = time.time()
    if args.zips_only:
        where = generate(os.path.join(args.data_dir, "handwriting"), settings)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
        try:
            where = prepare(args.data_dir, settings)
        except (FileExistsError, tfds_data.DataUnavailableError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(f"zips: {where} (settings {settings.key()}); {time.time() - start:.1f} s")
    if not args.zips_only:
        print(f"prepared: {os.path.join(args.data_dir, 'omniglot', '3.0.0')}\n"
              f"train on it: python -m trainers.omniglot --data_dir {args.data_dir} --nodownload")


if __name__ == "__main__":
    sys.exit(main())
