"""Scoring a split with a model: one jitted forward per batch over every device of the mesh."""
import numpy as np
from flax import nnx

from mlc_jax import config as config_lib, models, parallel
from mlc_jax.data import pipeline


def scorer(model, config, mesh, activation="sigmoid"):
  """fn(source, split, keep_images=16) -> (scores float32 (N, K), labels int8 (N, C) 1/0/-1, first images).

  Parameters are replicated over the mesh's 'data' axis and batches split over it (the batch is
  config.eval_batch_size rounded up to a multiple of the devices); the function compiles once for
  every split it scores. parallel.gather_split drops the padding rows by the pipeline's mask, so
  every image counts once, and puts the rows back in the split's stored order whatever the number
  of processes.
  """
  batch_size = config_lib.eval_batch_size(config, mesh)
  graphdef, state = nnx.split(model)
  state = parallel.replicate(state, mesh)
  forward = models.forward(graphdef, activation, mesh, parallel.jit_options(model))

  def score(source, split, keep_images=16):
    kept = []

    def batches():  # keeps this process's first images (stored order) on their way
      for batch in pipeline.batches(source, split, batch_size=batch_size, train=False,
                                    config=config):
        if sum(len(k) for k in kept) < keep_images:
          kept.append(batch["image"][batch["mask"]][:keep_images])
        yield batch

    rows = parallel.gather_split(lambda weights, batch: forward(weights, batch["image"]), state,
                           batches(), mesh)
    images = np.concatenate(kept)[:keep_images] if kept else np.zeros((0, 1, 1, 3), np.uint8)
    return rows["outputs"].astype(np.float32), rows["labels"].astype(np.int8), images

  return score
