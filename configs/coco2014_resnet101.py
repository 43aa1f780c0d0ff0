"""MS-COCO 2014 with ResNet-101 at 448 px: the protocol of ML-GCN's ResNet-101 baselines.

  python launch.py --config=configs/coco2014_resnet101.py --workdir=runs/coco2014_r101

The published rows this config answers (resources/literature.json): the megvii-research/ML-GCN
README's re-run baselines 'Res-101 GMP' (COCO mAP 81.9) and 'Res-101 GAP' (77.3; pass
--config.model.pooling=avg), beside ML-GCN itself (83.0), all ResNet-101 at 448 px. What this
config takes from ML-GCN's code (demo_coco_gcn.py, engine.py, models.py, util.py at 5517d6f):
448 px; batch 16; SGD momentum 0.9, the backbone at lr 0.1 x lrp 0.1 = 0.01 and the classifier at
lr 0.1 (lr_mult 10); 20 epochs at a constant rate (the demo's epoch_step 30 is never reached);
every layer trains, batch norm on batch statistics; global max pooling of the 14x14 map; BCE
averaged over classes (MultiLabelSoftMarginLoss); random crops of [0.5, 1] of the side and
horizontal flips for training, a plain resize (warp) to 448x448 for evaluation; top-3 labels
counted only with probability >= 0.5.

Weights: torchvision's resnet101 (IMAGENET1K_V1, the ImageNet weights of ML-GCN's torchvision
0.2) as a .safetensors file of its state_dict, the backbone ML-GCN uses (v1.5, preprocessing
'torch' = ML-GCN's mean/std normalisation):
  --config.model.resnet_layout=torchvision --config.model.weights=/path/resnet101.safetensors
Without those flags the config runs Keras applications' ResNet101 (model.weights='imagenet',
fetched; resnet_layout=keras, preprocessing 'caffe'), so the command works as written: that is
ResNet-101 v1 (stride in the first 1x1 conv of a stage, not in the 3x3) trained by another party,
so its figures are not torchvision's.

Where this config differs from ML-GCN's runs:
- the baselines' own code is not published: the classifier here is one linear layer on the pooled
  2048 features (models.py has only the GCN classifier; its lr split is kept);
- augmentation: ML-GCN's MultiScaleCrop (util.py) picks width and height independently from
  (1, .875, .75, .66, .5) of the shorter side (at most 2 steps apart, so the aspect changes) at 13
  fixed positions, then warps the crop to 448; here the image is first warped to 448x448 and a
  square crop of a side drawn uniformly from [0.5, 1] (augment.zoom=0.5) at a random position is
  resampled back (the aspect is kept, the scales and positions are continuous);
- weight decay: PyTorch's SGD adds 1e-4 x w to the gradient before momentum 0.9; ours is decoupled
  (w -= lr x wd x w, as Keras), so 1e-3 = 1e-4 / (1 - 0.9) gives the same shrinkage per step
  at a constant rate;
- ML-GCN validates on val2014, its test set, every epoch and reports the best epoch; here
  5% of train2014 is the validation set (best checkpoint by its mAP) and val2014 is scored once;
- ML-GCN's GCN engine also clips the gradient norm at 10 (engine.py); the plain engine its
  baselines would run through does not, nor does this config (--config.finetune.grad_clip=10);
- ImageNet weights: ML-GCN's models.py defaults to pretrained=False since commit 4ba3840 and its
  demo passes nothing, so its code at HEAD starts from random weights; its lrp option ('learning
  rate for pre-trained layers') and 4ba3840's parent (pretrained=True) mean ImageNet weights, as here;
- no head stage on cached features: the backbone and a freshly initialised classifier train
  together from the first step, as in ML-GCN (add 'features' and 'head' to stages for our
  usual warm start).
"""
from mlc_jax import config as defaults


def get_config():
  c = defaults.get_config()
  c.dataset = "coco/2014"
  c.image_size = 448
  c.batch_size = 16
  c.stages = ("finetune", "evaluate")
  c.data.val_fraction = 0.05
  c.data.resize = "plain"
  c.augment.flip = True
  c.augment.zoom = 0.5
  c.augment.rotation = 0.0
  c.model.arch = "resnet101"
  c.model.resnet_layout = "keras"     # torchvision with a .safetensors file: see the docstring
  c.model.weights = "imagenet"
  c.model.pooling = "max"              # 'Res-101 GMP'; avg for 'Res-101 GAP'
  c.head.hidden = ()
  c.head.dropout = 0.0
  c.finetune.epochs = 20
  c.finetune.unfreeze_blocks = "all"
  c.finetune.param_groups = (("head/.*", {"lr_mult": 10.0}),)
  c.finetune.batch_norm = "train"
  c.finetune.optimizer = "sgd"
  c.finetune.learning_rate = 0.01
  c.finetune.momentum = 0.9
  c.finetune.nesterov = False
  c.finetune.weight_decay = 1e-3
  c.finetune.schedule = "constant"
  c.loss.name = "bce"
  c.checkpoint.best_metric = "val_mAP"
  c.early_stopping_patience = 0
  c.eval.protocol = "literature"
  c.eval.topk_min_score = True
  c.eval.threshold = 0.5
  return c
