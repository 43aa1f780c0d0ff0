"""PyTorch side of benchmarks/train_step.py, run in its own interpreter (PyTorch's venv, no JAX).

  .venv-torch/bin/python benchmarks/torch_peer.py      (`make torch-peer` makes .venv-torch)

It answers benchmarks/peer_protocol.py's commands; its setup takes
  {"size": 224, "batch": 4, "unfreeze": "1"|"all"|"infer", "classes": 20, "blocks": 5,
   "dtype": "float32"|"bfloat16"}
and answers with torch's version and threads.
The model is train_step.py's: VGG16 features (3x3 convs, ReLU, 2x2 max pools), global average
pooling, fc1024-ReLU-dropout 0.5-fc(classes), the first `blocks` conv blocks kept (4: make demo's
model, tapped at block 4's pool); conv blocks below the top `unfreeze` ones frozen
(requires_grad False); SGD lr 1e-4 momentum 0.9, BCE with logits. "infer" times the forward under
torch.inference_mode(). Tensors are channels_last (NHWC, oneDNN's fast layout in PyTorch).
dtype bfloat16: the forward (and the loss's logits) under torch.autocast("cpu", torch.bfloat16),
float32 parameters and optimizer, as a PyTorch user mixes precision on a CPU.
"""
import contextlib

import torch
from torch import nn

import peer_protocol  # benchmarks/, this script's folder

BLOCKS = (2, 2, 3, 3, 3)
CHANNELS = (64, 128, 256, 512, 512)


def vgg16(classes, kept=5):
  layers, blocks, cin = [], [], 3
  for n, c in zip(BLOCKS[:kept], CHANNELS[:kept]):
    block = []
    for _ in range(n):
      block += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True)]
      cin = c
    block.append(nn.MaxPool2d(2))
    blocks.append(nn.Sequential(*block))
  layers = blocks + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1024), nn.ReLU(),
                     nn.Dropout(0.5), nn.Linear(1024, classes)]
  return nn.Sequential(*layers), blocks


def setup(size, batch, unfreeze, classes=20, blocks=5, dtype="float32"):
  torch.manual_seed(0)
  mixed = {"float32": contextlib.nullcontext,
           "bfloat16": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}[dtype]
  kept = blocks
  model, blocks = vgg16(classes, kept)
  model = model.to(memory_format=torch.channels_last)
  gen = torch.Generator().manual_seed(0)
  images = torch.randint(0, 256, (batch, 3, size, size), generator=gen).float() - 120.0
  images = images.contiguous(memory_format=torch.channels_last)
  labels = (torch.rand((batch, classes), generator=gen) < 0.1).float()
  if unfreeze == "infer":
    model.eval()

    def step():
      with torch.inference_mode(), mixed():
        model(images)
    return step
  top = 0 if unfreeze == "all" else kept - int(unfreeze)
  for b, block in enumerate(blocks, 1):
    for p in block.parameters():
      p.requires_grad_(b > top)
  opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
  loss_fn = nn.BCEWithLogitsLoss()
  model.train()

  def step():
    opt.zero_grad(set_to_none=True)
    with mixed():
      logits = model(images)
    loss = loss_fn(logits.float(), labels)
    loss.backward()
    opt.step()
  return step


def main():
  peer_protocol.serve(setup, lambda: {"threads": torch.get_num_threads(),
                                      "version": torch.__version__})


if __name__ == "__main__":
  main()
