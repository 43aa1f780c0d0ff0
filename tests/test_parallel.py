"""Data parallelism: 4 (fake) devices give the 1-device numbers; 2 processes train and checkpoint.

Both need a fresh JAX runtime, so they run tests/parallel_run.py in subprocesses: one with
XLA_FLAGS=--xla_force_host_platform_device_count=4, and two jax.distributed processes on
localhost (a local coordinator, one CPU device each) launched the way BUILD.md describes.
"""
import json
import pathlib
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from conftest import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "parallel_run.py")


def _env(xla_flags="", **extra):
  return subprocess_env(xla_flags, **extra)


def _tiny(shapes_config, **finetune):
  """The session's tiny shapes set; a VGG11 at 1/16 width (the fastest to compile)."""
  c = ml_collections.ConfigDict(shapes_config.to_dict())
  c.model.arch = "vgg11"
  c.stages = ("finetune",)
  c.finetune.epochs = 1
  c.finetune.update(finetune)
  return c


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_four_devices_match_one(shapes_config, tmp_path):
  # Batch norm on: its batch statistics must be those of the global batch, not of a shard.
  config = _tiny(shapes_config, unfreeze_blocks="2", learning_rate=0.01)
  config.model.batch_norm = True
  config.fsdp_min_size = 512  # the tiny model's kernels are small; fsdp splits all but biases/BN
  out = tmp_path / "runs.npz"
  proc = subprocess.run(
      [sys.executable, WORKER, "devices", config.to_json(), str(out)], cwd=ROOT,
      timeout=600,
      env=_env("--xla_force_host_platform_device_count=4"), capture_output=True,
      text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  runs = dict(np.load(out))
  assert int(runs["n_devices"]) == 4
  assert int(runs["one/batch_shards"]) == 1 and int(runs["all/batch_shards"]) == 4
  assert int(runs["fsdp/batch_shards"]) == 4
  # Each device's shard holds its quarter of the batch (a replicated batch has 4 shards too).
  batch = int(config.batch_size)
  assert runs["one/shard_rows"].tolist() == [batch]
  assert runs["all/shard_rows"].tolist() == [batch // 4] * 4 == runs["fsdp/shard_rows"].tolist()
  # Replicated: every device holds everything. fsdp: the large arrays are split 4 ways, the
  # optimizer's moments with their parameters (SGD momentum: one moment per parameter).
  for name in ("trainable", "frozen", "opt_state"):
    assert int(runs[f"all/split_leaves/{name}"]) == 0 and runs[f"all/held_share/{name}"] == 1.0
    assert int(runs[f"fsdp/split_leaves/{name}"]) >= 2, name
    assert runs[f"fsdp/held_share/{name}"] < 0.5, (name, runs[f"fsdp/held_share/{name}"])
  assert int(runs["fsdp/split_leaves/opt_state"]) == int(runs["fsdp/split_leaves/trainable"])
  names = [k[len("init/"):] for k in runs if k.startswith("init/")]
  assert any("trainable/" in n for n in names) and any("stats/" in n for n in names)
  for layout in ("all", "fsdp"):
    np.testing.assert_allclose(runs[f"{layout}/losses"], runs["one/losses"], rtol=1e-4)
    moved = 0
    for name in names:
      start, one, many = runs["init/" + name], runs["one/" + name], runs[f"{layout}/" + name]
      # The 4 shards reduce in another order, and a 1-ulp change can flip a max-pool tie or a
      # ReLU, so single elements may differ; the update as a whole must agree to float tolerance
      # (a real sharding bug, per-shard batch statistics or an unaveraged gradient, is far larger).
      update, gap = np.linalg.norm(one - start), np.linalg.norm(many - one)
      assert gap <= 0.03 * update + 1e-7 * np.sqrt(one.size), (layout, name, gap, update)
      moved += update > 1e-6
    assert moved >= len(names) // 2  # the steps really trained


def test_demo_eval_batch_on_four_devices_equals_one_device(shapes_config, tmp_path_factory,
                                                          tmp_path):
  # The session's trained run (tests/trained_run.py) ran features, head and evaluate on 4 (fake)
  # devices with the demo's eval_batch_size=250: padded to 252 (masked), the numbers must be a
  # 1-device evaluation's (made here, on a copy of that workdir).
  import shutil

  from mlc_jax.eval import evaluate
  from trained_run import trained_workdir
  workdir, config = trained_workdir(shapes_config, tmp_path_factory)
  assert int(config.eval_batch_size) == 250
  four = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
  assert four["meta"]["num_images"] == shapes_config.data.shapes_test
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  one = evaluate.evaluate(str(copy), split="test")
  for name in ("mAP", "CF1_top3", "OF1_top3", "lrap"):
    assert four["metrics"][name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), name


def _launch(runs, processes=2, timeout=600):
  """Starts the processes of one jax.distributed runtime on localhost, each training the
  [(config, workdir)] runs one after another; -> their (rc, stdout, stderr)."""
  port = _free_port()
  args = [a for config, workdir in runs for a in (config.to_json(), str(workdir))]
  procs = [subprocess.Popen(
      [sys.executable, WORKER, "train", *args], cwd=ROOT,
      env=_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
               JAX_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
  results = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=timeout)
      results.append((p.returncode, stdout, stderr))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return results


@pytest.fixture(scope="module")
def one_process_head(shapes_config, tmp_path_factory):
  """The head stage trained in this (1-process, 1-device) runtime: the 2-process run's reference."""
  from mlc_jax import models, restore, runner
  config = _tiny(shapes_config, unfreeze_blocks="1")
  config.stages = ("features", "head")
  config.head.epochs = 1
  workdir = tmp_path_factory.mktemp("one_process_head")
  runner.train_and_evaluate(config, str(workdir))
  return models.flat_params(restore.restore_model(workdir, "head", "latest").model)


LAYOUTS = ("replicated", "fsdp")


def _two_process_config(shapes_config, param_sharding):
  config = _tiny(shapes_config, unfreeze_blocks="1")
  # The feature cache and the eval outputs are written by process 0 only (evaluation once: its
  # restore does not depend on how training laid the parameters out).
  evaluates = param_sharding == "replicated"
  config.stages = ("features", "head", "finetune") + (("evaluate",) if evaluates else ())
  config.head.epochs = 1
  # fsdp: each process holds half of every array of >= 512 elements; the checkpoint is written
  # from the halves and must restore whole in one process.
  config.param_sharding, config.fsdp_min_size = param_sharding, 512
  return config


def _mixture_config(shapes_config):
  """A mixture (shapes: 8 labels; shapes_single: 16, 8 of them the same) through features, head
  and evaluate: each part's share of every split read by each process."""
  config = _tiny(shapes_config)
  config.dataset, config.stages = "shapes+shapes_single", ("features", "head", "evaluate")
  config.head.epochs, config.eval.examples = 1, 0
  return config


@pytest.fixture(scope="module")
def two_process_runs(shapes_config, tmp_path_factory):
  """Both layouts and a mixture trained by one pair of jax.distributed processes (one start-up
  for all): -> {layout or 'mixture': (config, workdir)} and the processes' (rc, stdout, stderr)."""
  runs = {layout: (_two_process_config(shapes_config, layout),
                   tmp_path_factory.mktemp(f"two_processes_{layout}") / "run") for layout in LAYOUTS}
  runs["mixture"] = (_mixture_config(shapes_config),
                     tmp_path_factory.mktemp("two_processes_mixture") / "run")
  return runs, _launch([runs[name] for name in (*LAYOUTS, "mixture")])


def test_two_processes_train_a_mixture_as_one_process_does(shapes_config, two_process_runs,
                                                           tmp_path):
  """The mixture's feature cache (rows at each image's stored position), its weighted head
  batches, and its per-part evaluation are those of a 1-process run."""
  from mlc_jax import models, restore, runner
  runs, results = two_process_runs
  for i, (rc, _, stderr) in enumerate(results):
    assert rc == 0, f"process {i}:\n{stderr[-3000:]}"
  config, two = runs["mixture"]
  one = tmp_path / "one"
  runner.train_and_evaluate(config, str(one))
  (cache_two,), (cache_one,) = ((w / "features").glob("*/meta.json") for w in (two, one))
  for split in ("train", "val", "test"):
    for kind in ("features", "labels"):
      np.testing.assert_allclose(np.load(cache_two.parent / f"{split}_{kind}.npy"),
                                 np.load(cache_one.parent / f"{split}_{kind}.npy"),
                                 rtol=1e-5, atol=1e-6, err_msg=f"{split} {kind}")
  head_two, head_one = (models.flat_params(restore.restore_model(w, "head", "latest").model)
                        for w in (two, one))
  for name in head_one:
    np.testing.assert_allclose(head_two[name], head_one[name], rtol=1e-5, atol=1e-7,
                               err_msg=name)
  metrics_two, metrics_one = (json.loads((w / "eval" / "test" / "metrics.json").read_text())
                              for w in (two, one))
  for part in ("shapes", "shapes_single"):
    for name in ("mAP", "CF1_top3", "OF1_top3"):
      assert metrics_two["sources"][part][name] == pytest.approx(
          metrics_one["sources"][part][name], rel=1e-5, abs=1e-6), (part, name)


@pytest.mark.parametrize("param_sharding", LAYOUTS)
def test_two_processes_train_and_checkpoint(shapes_config, param_sharding, two_process_runs,
                                            one_process_head):
  from flax import nnx

  from mlc_jax import checkpoints, models, restore
  from mlc_jax.eval import evaluate
  from mlc_jax.train import optim
  runs, results = two_process_runs
  config, workdir = runs[param_sharding]
  evaluates = "evaluate" in config.stages
  for i, (rc, _, stderr) in enumerate(results):
    assert rc == 0, f"process {i}:\n{stderr[-3000:]}"
  # one JSON line per run from each process, in run order
  reports = [[json.loads(line) for line in out.splitlines() if line.startswith("{")]
             for _, out, _ in results]
  index = LAYOUTS.index(param_sharding)
  assert [(r[index]["process"], r[index]["processes"], r[index]["devices"], r[index]["workdir"])
          for r in reports] == [(0, 2, 2, str(workdir)), (1, 2, 2, str(workdir))]
  assert "test:" in results[0][1] and "test:" not in results[1][1]  # the summary: process 0 only

  # Only process 0 wrote the log: one row per stage's one epoch, one TensorBoard event file.
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = shapes_config.data.shapes_train // shapes_config.batch_size
  head_steps = shapes_config.data.shapes_train // shapes_config.head.batch_size
  assert [(r["stage"], r["epoch"]) for r in rows] == [("head", 1), ("finetune", 1)]
  assert rows[-1]["step"] == steps
  # Every image is computed once per step, by one of the two processes: the global batches hold
  # batch_size images (a process feeding the whole batch would double them).
  assert rows[0]["train_images"] == head_steps * shapes_config.head.batch_size
  assert rows[1]["train_images"] == steps * shapes_config.batch_size
  assert len(list((workdir / "features").glob("*/meta.json"))) == 1
  assert len(list((workdir / "tensorboard").glob("events.*"))) == 1
  assert checkpoints.is_done(workdir, "finetune")

  # The head stage sees the global batches of a 1-process run: the same trained head.
  head = models.flat_params(restore.restore_model(workdir, "head", "latest").model)
  assert head.keys() == one_process_head.keys()
  for name in head:
    np.testing.assert_allclose(head[name], one_process_head[name], rtol=1e-5, atol=1e-7,
                               err_msg=name)

  # The 2-process evaluation equals a 1-process evaluation of the same checkpoint.
  if evaluates:
    two = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())["metrics"]
    one = evaluate.evaluate(str(workdir), split="test")
    for name in ("mAP", "CF1_top3", "OF1_top3", "f1_macro", "lrap"):
      assert one[name] == pytest.approx(two[name], rel=1e-5, abs=1e-6), name

  # The collective checkpoint restores in this single process (one CPU device).
  restored = restore.restore_model(workdir, "finetune", "latest")
  assert restored.labels == (workdir / "labels.txt").read_text().splitlines()
  fresh = models.build_model(restored.config, len(restored.labels),
                             rngs=nnx.Rngs(int(config.seed)))
  after, before = models.flat_params(restored.model), models.flat_params(fresh)
  assert after.keys() == before.keys()
  keep = optim.ParamGroups(optim.unfreeze_groups("1")).trainable()
  trainable = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(fresh, keep))}
  for name, value in after.items():
    assert np.all(np.isfinite(value)), name
    if name in trainable:
      assert not np.array_equal(value, before[name]), f"{name} did not train"
    else:
      np.testing.assert_array_equal(value, before[name], err_msg=f"frozen {name} changed")


def test_gather_drops_padding_and_puts_rows_back_in_stored_order():
  # What metrics.Accumulator promised, now parallel.gather_split's job: padded rows hold garbage
  # (NaN scores, label 7) that must not count, the rows come back in stored order from batches whose
  # 'index' runs in another order (as several processes' shares do), and the per-batch totals add
  # up in float64. Reference: the unpadded data in stored order, and one metrics.compute on it.
  import jax
  from mlc_jax import metrics, parallel
  rng = np.random.default_rng(0)
  n, c, size = 90, 6, 16
  scores = np.round(rng.random((n, c)), 1).astype(np.float32)  # ties
  labels = np.where(rng.random((n, c)) < 0.1, -1, rng.random((n, c)) < 0.3).astype(np.int8)
  shuffled = rng.permutation(n)
  pad = -n % size
  order = np.concatenate([shuffled, np.full(pad, -1)])
  batches = []
  for start in range(0, n + pad, size):
    rows = order[start:start + size]
    mask = rows >= 0
    s = np.where(mask[:, None], scores[np.maximum(rows, 0)], np.nan).astype(np.float32)
    y = np.where(mask[:, None], labels[np.maximum(rows, 0)], 7).astype(np.int8)
    batches.append({"scores": s, "labels": y, "mask": mask, "index": rows.astype(np.int32)})

  def forward(weight, batch):
    return batch["scores"] * weight, jax.numpy.sum(jax.numpy.where(batch["mask"], 1.5, 0.0))

  got = parallel.gather_split(forward, np.float32(1), iter(batches), parallel.mesh())
  np.testing.assert_array_equal(got["outputs"], scores)
  np.testing.assert_array_equal(got["labels"], labels)
  np.testing.assert_array_equal(got["index"], np.arange(n))
  assert got["total"] == 1.5 * n
  whole = metrics.compute(scores, labels, k=3)
  from_gather = metrics.compute(got["outputs"], got["labels"], k=3)
  for key, value in whole.items():
    np.testing.assert_array_equal(from_gather[key], value, err_msg=key)
