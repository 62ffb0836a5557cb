"""Why a cue-reward run stays at chance: is its modulator alive, and does its state hold the answer?

    python -m benchmarks.cue_diagnosis --runs RUN_DIR[,RUN_DIR...]

For each run directory of `python -m trainers.cue_reward` (its `model.keras`,
or the newest backup of a run that is still going or was stopped), on
`--episodes` episodes drawn from `--seed` (not the run's own stream), it prints:

- `M_t`, the modulation (docs/neuromodulation.md): its mean and standard
  deviation over all steps, and its mean at the steps right after a reward
  (+1) and after a penalty (-1), where the agent sees the outcome. A modulator
  at +1 or -1 whatever the outcome is dead: `tanh'` is about 0 there, so no
  gradient brings it back, and the trace grows by `E_t` at every step like an
  unmodulated one.
- `probe`: how well a linear readout of the hidden state `h_t` at the response
  steps after step `T / 2` tells whether the trial showed the target: least
  squares on half of those trials, accuracy on the other half (0.5: the state
  holds nothing the policy could read).
- the policy's accuracy at the same steps and the reward per episode.
- `|h|`: the mean absolute hidden activity, and `h saturated`: the share of
  `h_t` entries beyond 0.95 in absolute value. A network that stopped learning
  either saturates (most entries near +1 or -1, `tanh'` about 0) or falls silent
  (`|h|` small); in both the policy reads nothing.
- `certainty`: the mean of `|2 pi(answer 1) - 1|` at the response steps (0:
  a uniform policy, 1: a sure one), and `elsewhere` the same at the other steps,
  whose actions earn nothing.
"""

import hebbcli

hebbcli.import_tensorflow()

import os

import keras
import numpy as np
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
    """The command's flags (defined when run, so that importing `diagnose` defines none)."""
    flags.DEFINE_list("runs", None, "Run directories of python -m trainers.cue_reward, "
                      "comma-separated.")
    flags.DEFINE_integer("episodes", 300, "Episodes run per model.")
    flags.DEFINE_integer("seed", 7, "Seed of the episodes (the runs train on their own --seed's).")


def load_agent(run_dir):
    """`(agent, where its weights came from)`: model.keras, else the newest backup."""
    from trainers import cue_reward, files

    model_path = os.path.join(run_dir, "model.keras")
    if os.path.isfile(model_path):
        return keras.saving.load_model(model_path), "model.keras"
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{run_dir} holds no cue-reward run (config.json): pass the run_dir "
                         "of a run of python -m trainers.cue_reward.")
    with open(config_path) as f:
        config = cue_reward.CueRewardConfig.from_json(f.read())
    agent = cue_reward.build_agent(config)
    agent.compile(optimizer=cue_reward.CueRewardTask(config).optimizer())
    epoch, _ = files.restore_backup(agent, os.path.join(run_dir, "backup"))
    if not epoch:
        raise ValueError(f"{run_dir} has neither model.keras nor a backup to load.")
    return agent, f"backup after epoch {epoch}"


def diagnose(agent, episodes, seed):
    """The numbers above, as a dict."""
    seeds = np.stack([np.full(episodes, seed), np.arange(episodes)], 1).astype(np.int64)
    out = {k: np.asarray(v) for k, v in agent(seeds).items()}
    has_target = np.asarray(agent.task.draw(seeds)["has_target"])
    steps = out["rewards"].shape[1]
    respond = (out["shown"] == agent.task.cues) & (np.arange(steps) >= steps // 2)
    outcome = np.pad(out["rewards"][:, :-1], ((0, 0), (1, 0)))  # seen at each step
    m = out["modulation"]
    h, truth = out["hidden"][respond], has_target[respond]
    features = np.concatenate([h, np.ones((len(h), 1))], 1)
    fit = np.arange(len(h)) % 2 == 0
    certainty = np.abs(2 * out["probs"][..., 1] - 1)
    readout = np.linalg.lstsq(features[fit], np.where(truth[fit], 1.0, -1.0), rcond=None)[0]
    return {
        "M mean": m.mean(), "M std": m.std(),
        "M after +1": m[outcome > 0].mean(), "M after -1": m[outcome < 0].mean(),
        "probe": ((features[~fit] @ readout > 0) == truth[~fit]).mean(),
        "policy": ((out["probs"][..., 1][respond] > 0.5) == truth).mean(),
        "reward/episode": out["rewards"].sum(1).mean(),
        "|h|": np.abs(out["hidden"]).mean(),
        "h saturated": (np.abs(out["hidden"]) > 0.95).mean(),
        "certainty": certainty[out["shown"] == agent.task.cues].mean(),
        "elsewhere": certainty[out["shown"] != agent.task.cues].mean(),
    }


def main(argv):
    if not FLAGS.runs:
        raise ValueError("--runs is empty: give run directories of python -m trainers.cue_reward.")
    header = None
    for run_dir in FLAGS.runs:
        agent, source = load_agent(run_dir)
        row = diagnose(agent, FLAGS.episodes, FLAGS.seed)
        if header is None:
            header = list(row)
            print("| run | weights | " + " | ".join(header) + " |")
            print("|---|---|" + "---|" * len(header))
        print(f"| {run_dir} | {source} | " + " | ".join(f"{row[k]:.3f}" for k in header) + " |")


if __name__ == "__main__":
    define_flags()
    hebbcli.run(main, errors=(ValueError,))
