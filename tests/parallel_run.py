"""Subprocess side of tests/test_parallel.py: runs that need their own JAX runtime.

  python tests/parallel_run.py devices CONFIG_JSON OUT.npz  (XLA_FLAGS: 4 host devices)
  python tests/parallel_run.py train CONFIG_JSON WORKDIR [CONFIG_JSON WORKDIR ...]
                                                   (one process of a jax.distributed runtime)

`devices` runs the package's finetune step for a few steps on a 1-device mesh and on a mesh of
every (fake) device (parameters replicated, then split with param_sharding='fsdp'), from the
same initial state and the same batches, and saves each run's per-step losses, final parameters,
the rows each device's shard of a batch holds, and how much of the parameters and optimizer state
one device holds (the demo's eval_batch_size on 4 devices is checked on tests/trained_run.py's
run). `train` is runner.train_and_evaluate; the distributed runtime comes from the
environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for `configs`

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

STEPS = 3


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def _split_share(tree):
  """(leaves split over devices, share of all elements one device holds) of a placed tree."""
  leaves = jax.tree.leaves(tree)
  split = sum(x.addressable_shards[0].data.size < x.size for x in leaves)
  held = sum(x.addressable_shards[0].data.size for x in leaves)
  return split, held / max(1, sum(x.size for x in leaves))


def run_steps(config, mesh, model, batches):
  """STEPS finetune steps of `model` on mesh -> (losses, flat trainable+stats, layout facts).

  Parameters and optimizer state are laid out as config.param_sharding says, as fit does it.
  """
  from mlc_jax import parallel
  from mlc_jax.train import loop, stages
  p = loop.prepare(stages.finetune_stage(config, model, steps_per_epoch=STEPS), config, mesh)
  state, key, losses = p.state, jax.random.PRNGKey(0), []
  for i, batch in enumerate(batches):
    before = float(state.loss_sum)
    device_batch = parallel.shard_batch(batch, mesh)
    rows = [shard.data.shape[0] for shard in device_batch["image"].addressable_shards]
    state = p.train_step(state, p.frozen, device_batch, key, i)
    losses.append(float(state.loss_sum) - before)
  out = _flat({"trainable": state.trainable, "stats": state.stats})
  out.update(losses=np.asarray(losses), batch_shards=np.asarray(len(rows)),
             shard_rows=np.asarray(rows))
  for name, tree in (("trainable", state.trainable), ("frozen", p.frozen),
                     ("opt_state", state.opt_state)):
    split, share = _split_share(tree)
    out.update({f"split_leaves/{name}": np.asarray(split), f"held_share/{name}": np.asarray(share)})
  return out


def devices(config, out):
  """1 device vs every device (replicated, and fsdp) from the same start and batches -> OUT.npz
  with one/, all/ and fsdp/ entries."""
  from flax import nnx

  from mlc_jax import models, parallel
  from mlc_jax.data import pipeline, registry
  from mlc_jax.train import stages
  source = registry.get(config)
  fresh = lambda: models.build_model(config, len(source.labels), rngs=nnx.Rngs(0))
  batches = list(pipeline.batches(source, "train", batch_size=int(config.batch_size), train=True,
                                  config=config, seed=0))[:STEPS]
  result = {"n_devices": np.asarray(len(jax.devices()))}
  # what the finetune stage trains and which batch statistics it updates (finetune.batch_norm)
  start = fresh()
  stage = stages.finetune_stage(config, start)
  _, trainable, stats, _ = nnx.split(start, stage.trainable, stage.stats, ...)
  result.update({f"init/{k}": v for k, v in _flat({"trainable": trainable, "stats": stats}).items()})
  fsdp = ml_collections.ConfigDict(config.to_dict())
  fsdp.param_sharding = "fsdp"
  for name, devs, cfg in (("one", jax.devices()[:1], config), ("all", jax.devices(), config),
                          ("fsdp", jax.devices(), fsdp)):
    run = run_steps(cfg, parallel.mesh(devs), fresh(), batches)
    result.update({f"{name}/{k}": v for k, v in run.items()})
  np.savez(out, **result)


def main():
  """Dispatches on argv[1]."""
  mode, target = sys.argv[1], sys.argv[3]
  config = ml_collections.ConfigDict(json.loads(sys.argv[2]))
  if mode == "devices":
    devices(config, target)
  elif mode == "train":  # train CONFIG WORKDIR [CONFIG WORKDIR ...]: the runs one after another
    from mlc_jax import runner
    for config_json, workdir in zip(sys.argv[2::2], sys.argv[3::2]):
      runner.train_and_evaluate(ml_collections.ConfigDict(json.loads(config_json)), workdir)
      print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                        "devices": jax.device_count(), "workdir": workdir}), flush=True)
  else:
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
  main()
