"""mlc_jax.restore: which workdir, stage and step a path names (the model itself: test_checkpoints,
test_runner, test_inference_*)."""
import pytest

from mlc_jax import restore
from mlc_jax.errors import UserError


def _workdir(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "checkpoints" / "head" / "12").mkdir(parents=True)
  (tmp_path / "checkpoints" / "head" / "bad").mkdir()
  return tmp_path.resolve()


def test_a_path_names_the_workdir_stage_and_step(tmp_path):
  w = _workdir(tmp_path)
  assert restore.find_workdir(w) == (w, None, None)
  assert restore.find_workdir(w / "checkpoints" / "head") == (w, "head", None)
  assert restore.find_workdir(w / "checkpoints" / "head" / "12") == (w, "head", 12)
  assert restore.find_workdir(w / "checkpoints") == (w, None, None)


def test_paths_that_name_no_checkpoint_are_refused_in_one_line(tmp_path):
  w = _workdir(tmp_path)
  with pytest.raises(UserError, match="does not exist; pass a training workdir"):
    restore.find_workdir(w / "nothing")
  with pytest.raises(UserError, match="is not a checkpoint step folder"):
    restore.find_workdir(w / "checkpoints" / "head" / "bad")
  (w / "eval").mkdir()
  with pytest.raises(UserError, match="is not a checkpoint folder of"):
    restore.find_workdir(w / "eval")
  outside = tmp_path.parent / f"{tmp_path.name}_outside"
  outside.mkdir()
  with pytest.raises(UserError, match="is not inside a training workdir"):
    restore.find_workdir(outside)


def test_restore_refuses_a_stage_the_path_contradicts_and_a_bad_which(tmp_path):
  w = _workdir(tmp_path)
  with pytest.raises(UserError, match="is a checkpoint of the head stage, not of finetune"):
    restore.restore(w / "checkpoints" / "head", stage="finetune")
  with pytest.raises(UserError, match="which='worst' must be 'best' or 'latest'"):
    restore.restore(w, which="worst")
