"""A trained model as an ONNX graph (onnx.helper): uint8 images in, probabilities out.

  images         uint8 (N, S, S, 3) RGB 0-255, N symbolic ('batch')
  probabilities  float32 (N, C), sigmoid per label or softmax

The graph is written from the model's layers, each mapped to standard ONNX ops (opset 17):
the preprocessing convention (caffe: RGB->BGR minus the BGR means; torch: /255, mean/std; tf:
/127.5 - 1; unit: /255) on the NHWC input, a transpose to NCHW, then the backbone's layers by its
family (VGG, ResNet, EfficientNet-Lite: mlc_jax.inference.onnx_families, batch norm in inference
mode); then the ImageNet top (VGG: Flatten in H, W, C order as Keras does, Gemm fc1/fc2 with
Relu[, predictions]; ResNet, EfficientNet-Lite: GlobalAveragePool[, Gemm predictions]) or the
pooling (GlobalAveragePool, GlobalMaxPool, or the H, W, C flatten), the head's Gemm layers with
Relu (dropout is the identity at inference) and the activation. Weights are float32 initializers
whatever dtype the model computed in (a bfloat16-trained model exports in float32). A layout the
mapping does not know is one UserError naming it, before anything is written.
"""
import numpy as np

from mlc_jax.errors import UserError
from mlc_jax.inference import onnx_families
from mlc_jax.inference.onnx_families import value
from mlc_jax.models import backbone as backbone_lib, vgg

OPSET = 17


class _Graph:
  """Nodes and initializers collected in order; names are unique by a counter."""

  def __init__(self):
    from onnx import helper  # noqa: PLC0415 - only the ONNX export needs onnx
    self.helper, self.nodes, self.inits, self.count = helper, [], [], 0

  def const(self, name, array):
    from onnx import numpy_helper  # noqa: PLC0415
    self.inits.append(numpy_helper.from_array(np.asarray(array), name))
    return name

  def op(self, kind, inputs, **attrs):
    self.count += 1
    out = f"{kind.lower()}_{self.count}"
    self.nodes.append(self.helper.make_node(kind, list(inputs), [out], **attrs))
    return out

  def dense(self, x, layer, name):
    w = self.const(f"{name}/kernel", value(layer.kernel))  # (in, out): Gemm without transB
    b = self.const(f"{name}/bias", value(layer.bias))
    return self.op("Gemm", [x, w, b])


def _preprocess(g, x, convention):
  x = g.op("Cast", [x], to=1)  # float32
  if convention == "caffe":
    bgr = g.op("Gather", [x, g.const("bgr_order", np.asarray([2, 1, 0], np.int64))], axis=3)
    return g.op("Sub", [bgr, g.const("caffe_mean_bgr", np.asarray(backbone_lib.CAFFE_MEAN_BGR, np.float32))])
  if convention == "torch":
    x = g.op("Div", [x, g.const("scale_255", np.float32(255.0))])
    x = g.op("Sub", [x, g.const("torch_mean", np.asarray(backbone_lib.TORCH_MEAN, np.float32))])
    return g.op("Div", [x, g.const("torch_std", np.asarray(backbone_lib.TORCH_STD, np.float32))])
  if convention == "tf":
    x = g.op("Div", [x, g.const("scale_127_5", np.float32(127.5))])
    return g.op("Sub", [x, g.const("one", np.float32(1.0))])
  if convention == "unit":
    return g.op("Div", [x, g.const("scale_255", np.float32(255.0))])
  raise UserError(f"ONNX export: preprocessing {convention!r} has no ONNX mapping "
                  f"(known: {', '.join(backbone_lib.CONVENTIONS)})")


def _flatten_hwc(g, x):
  """NCHW -> (N, H*W*C) in H, W, C order (Keras's Flatten on channels_last)."""
  nhwc = g.op("Transpose", [x], perm=[0, 2, 3, 1])
  return g.op("Reshape", [nhwc, g.const(f"flat_shape_{g.count}", np.asarray([0, -1], np.int64))])


def _backbone(g, x, net):
  """The backbone's nodes from NHWC uint8 to its output (features, top features or logits)."""
  x = _preprocess(g, x, net.preprocessing)
  x = onnx_families.features(g, g.op("Transpose", [x], perm=[0, 3, 1, 2]), net)  # NCHW from here
  if net.include_top and isinstance(net, vgg.VGG):
    x = _flatten_hwc(g, x)
    x = g.op("Relu", [g.dense(x, net.fc1, "fc1")])
    x = g.op("Relu", [g.dense(x, net.fc2, "fc2")])
    return g.dense(x, net.predictions, "predictions") if net.num_classes else x
  if net.include_top:  # ResNet, EfficientNet-Lite: global average pool, then predictions
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    return g.dense(x, net.predictions, "predictions") if net.num_classes else x
  if net.pooling == "avg":
    return g.op("Flatten", [g.op("GlobalAveragePool", [x])])
  if net.pooling == "max":
    return g.op("Flatten", [g.op("GlobalMaxPool", [x])])
  if net.pooling == "flatten":
    return _flatten_hwc(g, x)
  raise UserError(f"ONNX export: model.pooling={net.pooling!r} gives a feature map, not the "
                  "vector a classifier ends in; export a model with pooling avg, max or flatten")


def build(model, num_classes, activation, image_size):
  """onnx.ModelProto of a MultiLabelModel (backbone + head) or a VGG with its own predictions."""
  from onnx import TensorProto, checker, helper  # noqa: PLC0415
  if activation not in ("sigmoid", "softmax"):
    raise UserError(f"ONNX export: activation {activation!r} has no ONNX mapping")
  net = getattr(model, "backbone", model)
  g = _Graph()
  x = _backbone(g, "images", net)
  head = getattr(model, "head", None)
  if head is not None:
    for i in range(1, len(head.sizes) + 1):
      x = g.op("Relu", [g.dense(x, getattr(head, f"fc{i}"), f"head/fc{i}")])
    x = g.dense(x, head.predictions, "head/predictions")
  elif not net.num_classes:
    raise UserError("ONNX export: the model ends in features, not class scores (no head, no "
                    "predictions layer)")
  out = g.op("Sigmoid", [x]) if activation == "sigmoid" else g.op("Softmax", [x], axis=-1)
  g.nodes.append(helper.make_node("Identity", [out], ["probabilities"]))
  graph = helper.make_graph(
      g.nodes, "mlc_jax",
      [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                     ["batch", int(image_size), int(image_size), 3])],
      [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                     ["batch", int(num_classes)])],
      initializer=g.inits)
  proto = helper.make_model(graph, producer_name="mlc_jax",
                            opset_imports=[helper.make_opsetid("", OPSET)])
  proto.ir_version = 8  # onnxruntime 1.32 reads IR 8 with opset 17
  checker.check_model(proto, full_check=proto.ByteSize() < 2 ** 31 - 2 ** 20)
  return proto
