"""A sweep on the demo (configs/shapes_demo.py): head and finetune settings, on validation only.

  make sweep-demo      (pretrains once like make demo, then:)
  python launch.py --mode=sweep --config=configs/sweep_demo.py --workdir=runs/sweep \\
      --config.model.weights=PRETRAINED.h5

Every trial shares one bottleneck-feature cache (the first trial computes it), trains the head a
few epochs and fine-tunes one epoch; runs/sweep/report.md ranks the trials by validation mAP and
gives the best as a command.
"""
from configs import shapes_demo as demo


def get_config():
  c = demo.get_config()
  c.head.epochs = 5
  c.finetune.epochs = 1
  c.sweep.sampler = "tpe"
  c.sweep.n_trials = 12
  c.sweep.objective = "val_mAP"
  c.sweep.space = (
      ("head.hidden", ("categorical", ((), (128,), (256,), (256, 128)))),
      ("head.dropout", ("categorical", (0.0, 0.2, 0.5))),
      ("head.learning_rate", ("log", 3e-4, 3e-3)),
      ("finetune.unfreeze_blocks", ("categorical", ("1", "2", "3"))),
      ("batch_size", ("categorical", (16, 32))),
  )
  return c
