"""benchmarks/gpu_step.py --dry-run with TensorFlow unimportable: the accelerator check's step path
(models, augmentation, steps, state, loop.prepare, losses, optim, parallel, inference) must not
grow a TensorFlow dependency, since the accelerator machine has none."""
import json
import os
import subprocess
import sys

from conftest import ROOT

BLOCKED = ("tensorflow", "tensorflow_datasets")
# Placed on PYTHONPATH as sitecustomize: every process of the run (the children too) refuses them.
BLOCKER = f'''import sys


class _NoTensorFlow:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {BLOCKED!r}:
      raise ImportError(f"{{name}} is blocked by tests/test_gpu_dry_run.py")
    return None


sys.meta_path.insert(0, _NoTensorFlow())
'''


def test_dry_run_runs_every_setting_without_tensorflow(tmp_path):
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(BLOCKER)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(site), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--dry-run",
                         "--in_process", f"--out={out}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads((out / "gpu_step.json").read_text())
  assert result["dry_run"] and result["device"]["platform"] == "cpu"
  rows = {r["name"]: r for r in result["results"]}
  expected = ["finetune unfreeze 1 batch 2", "finetune unfreeze all batch 2", "head batch 8",
              "inference batch 2"]
  for name in expected:
    assert "error" not in rows[name], rows[name]
    assert rows[name]["images_per_s"] > 0, rows[name]
    assert rows[name]["compiled_bytes"] > 0, rows[name]
  for name in expected[:2]:
    assert rows[name]["xla_flops_per_image"] > 0 and rows[name]["hardware_util"] > 0
  # A partly frozen step costs less than the full one (the frozen blocks get no backward pass).
  assert rows[expected[0]]["xla_flops_per_image"] < rows[expected[1]]["xla_flops_per_image"]
  assert rows["inference batch 2"]["device_images_per_s"] > 0
  assert rows["inference batch 2"]["scores_finite"]
  # The blocker held: the decode row (tf.data) says why it was not measured.
  assert "TensorFlow is not installed" in rows["host decode+resize 224, all cores"]["skipped"]
  assert "| finetune unfreeze all batch 2 |" in proc.stdout  # the table on stdout
