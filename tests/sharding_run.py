"""Subprocess side of tests/test_sharding.py: runs that need their own JAX runtime.

  python tests/sharding_run.py devices CONFIG_JSON OUT.npz  (XLA_FLAGS: 4 host devices)
  python tests/sharding_run.py train CONFIG_JSON WORKDIR     (one process of a jax.distributed run)

`devices` runs the package's finetune step for a few steps on a 1-device mesh and on a mesh of
every (fake) device (parameters replicated, then split with param_sharding='fsdp'), from the
same initial state and the same batches, and saves each run's per-step losses, final parameters
and how much of the parameters and optimizer state one device holds. `train` is train.train_and_evaluate; the distributed
runtime comes from the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
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


def run_steps(config, mesh, graphdef, state, batches):
  """STEPS finetune steps on mesh from host copies of state -> (losses, flat trainable+stats).

  Parameters and optimizer state are laid out as config.param_sharding says, the way
  train.run_finetune does it.
  """
  from mlc_jax import optim, sharding, steps, train
  from mlc_jax.data import augment
  tx = optim.make(config.finetune, STEPS)
  trainable, stats, frozen = (jax.tree.map(np.array, s) for s in state)
  layout = train.state_layout(config, mesh, tx, trainable, stats=stats, frozen=frozen)
  trainable, stats, frozen = (sharding.place(tree, layout[name]) for tree, name in
                              ((trainable, "trainable"), (stats, "stats"), (frozen, "frozen")))
  step_fn = steps.make_finetune_step(
      mesh, graphdef, tx, train.loss_fn(config),
      lambda images, key: augment.augment(images, key, config.augment), layout)
  opt_state = jax.jit(tx.init, out_shardings=layout["opt_state"])(trainable)
  sums, key, losses = sharding.replicate(steps.zero_sums(), mesh), jax.random.PRNGKey(0), []
  for i, batch in enumerate(batches):
    before = float(sums["loss_sum"])
    device_batch = sharding.shard_batch(batch, mesh)
    shards = len(device_batch["image"].addressable_shards)
    trainable, stats, opt_state, sums = step_fn(trainable, stats, frozen, opt_state, sums,
                                                device_batch, key, i)
    losses.append(float(sums["loss_sum"]) - before)
  out = _flat({"trainable": trainable, "stats": stats})
  out.update(losses=np.asarray(losses), batch_shards=np.asarray(shards))
  for name, tree in (("trainable", trainable), ("frozen", frozen), ("opt_state", opt_state)):
    split, share = _split_share(tree)
    out.update({f"split_leaves/{name}": np.asarray(split), f"held_share/{name}": np.asarray(share)})
  return out


def devices(config, out):
  """1 device vs every device (replicated, and fsdp) from the same start and batches -> OUT.npz
  with one/, all/ and fsdp/ entries."""
  from flax import nnx

  from mlc_jax import models, optim, sharding
  from mlc_jax.data import pipeline, registry
  source = registry.get(config)
  model = models.build_model(config, len(source.labels), rngs=nnx.Rngs(0))
  keep = optim.trainable_filter(config.finetune.unfreeze_blocks, config.model.include_top)
  graphdef, *state = nnx.split(model, keep, nnx.BatchStat, ...)
  batches = list(pipeline.batches(source, "train", batch_size=int(config.batch_size), train=True,
                                  config=config, seed=0))[:STEPS]
  result = {"n_devices": np.asarray(len(jax.devices()))}
  start = _flat({"trainable": state[0], "stats": state[1]})
  result.update({f"init/{k}": v for k, v in start.items()})
  fsdp = ml_collections.ConfigDict(config.to_dict())
  fsdp.param_sharding = "fsdp"
  for name, devs, cfg in (("one", jax.devices()[:1], config), ("all", jax.devices(), config),
                          ("fsdp", jax.devices(), fsdp)):
    run = run_steps(cfg, sharding.mesh(devs), graphdef, state, batches)
    result.update({f"{name}/{k}": v for k, v in run.items()})
  np.savez(out, **result)


def main():
  """Dispatches on argv[1]."""
  mode, target = sys.argv[1], sys.argv[3]
  config = ml_collections.ConfigDict(json.loads(sys.argv[2]))
  if mode == "devices":
    devices(config, target)
  elif mode == "train":
    from mlc_jax import train
    train.train_and_evaluate(config, target)
    print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                      "devices": jax.device_count()}), flush=True)
  else:
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
  main()
