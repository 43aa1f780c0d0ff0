"""mlc_jax.sweep.space: the grid a space spans, a trial's config and its command (the sampled study:
test_sweep)."""
import json

from conftest import default_config
from mlc_jax.sweep import space as space_lib


def test_the_grid_lists_every_value_and_each_int_in_its_range():
  space = [("head.hidden", "categorical", ((512,), (256, 128))), ("finetune.unfreeze_blocks",
                                                                    "int", (1, 3))]
  assert space_lib.grid(space) == {"head.hidden": ["[512]", "[256, 128]"],
                                   "finetune.unfreeze_blocks": ["1", "2", "3"]}


def test_a_trial_config_sets_its_values_with_the_keys_types_and_never_evaluates():
  base = default_config()
  trial = space_lib.trial_config(base, {"head.hidden": [256, 128], "head.learning_rate": 1,
                                        "finetune.epochs": 3})
  assert trial.head.hidden == (256, 128)  # JSON's list back to the key's tuple
  assert isinstance(trial.head.learning_rate, float) and trial.head.learning_rate == 1.0
  assert trial.finetune.epochs == 3
  assert trial.stages == ("features", "head", "finetune")  # the test split stays unread
  assert base.head.hidden == (1024,) and "evaluate" in base.stages  # the base is not touched


def test_the_best_command_quotes_each_value_for_the_shell():
  command = space_lib.command("configs/x.py", "runs/t", {"head.hidden": [256, 128],
                                                         "head.learning_rate": 0.001})
  assert command == ("python launch.py --config=configs/x.py --workdir=runs/t "
                     "--config.head.hidden='(256, 128)' --config.head.learning_rate=0.001")
  assert json.loads(space_lib.grid([("k", "categorical", ((1, 2),))])["k"][0]) == [1, 2]
