"""--mode=export: a trained run as a model that runs without mlc_jax: StableHLO (jax) or ONNX.

The export folder holds (--format=stablehlo, the default):
  inference.jax       jax.export serialization of f(params, images) -> probabilities, where images
                      is uint8 (N, S, S, 3) RGB 0-255 with a symbolic batch N and probabilities
                      float32 (N, C); ImageNet normalisation and the activation happen inside
  params.npz          the weights {'backbone/block1_conv1/kernel': array, ...}: f's params
or (--format=onnx) model.onnx: the same function as an ONNX graph with the weights inside
(mlc_jax.inference.onnx_graph), for onnxruntime and any ONNX runtime; and in both:
  labels.txt          the C labels, in output order
  preprocessing.json  what to do to a picture before the function: decode to RGB, resize to S x S
  serve.py            a loader and CLI using only numpy, PIL and jax or onnxruntime
  README.md           how to call it
StableHLO: the weights travel beside the function rather than inside it as constants, so it stays
small whatever the model's size, and the weights can be read (or swapped) without jax.
"""
import importlib.resources
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlc_jax import models
from mlc_jax.data import reader
from mlc_jax.models import weights as weights_lib
from mlc_jax.errors import UserError
from mlc_jax.inference import restore
from mlc_jax.ops import conv

PLATFORMS = ("cpu", "cuda", "tpu")
FORMATS = ("stablehlo", "onnx")
FUNCTION_FILE = "inference.jax"
ONNX_FILE = "model.onnx"

README = """# Exported mlc_jax model

Runs with `jax`, `numpy` and `pillow` only (no mlc_jax, no flax). Exported from {source}
with jax {jax_version} for platforms {platforms}.

    python serve.py --k=3 photo.jpg other.png

    import serve                      # from inside this folder
    model = serve.load(".")
    model.predict(["photo.jpg"])      # float32 (N, {num_classes}) probabilities, labels.txt order
    model.top_k(["photo.jpg"], k=3)   # [[(label, probability), ...], ...]

Or without serve.py:

    import jax, numpy as np
    f = jax.export.deserialize(bytearray(open("inference.jax", "rb").read()))
    params = dict(np.load("params.npz"))
    probabilities = f.call(params, images)  # images: uint8 (N, {size}, {size}, 3) RGB

`images` must already be {size} x {size} RGB uint8 (see preprocessing.json: resize '{resize}',
bilinear with antialiasing); normalisation and the {activation} happen inside the function.
"""

ONNX_README = """# Exported mlc_jax model (ONNX)

Runs with `onnxruntime`, `numpy` and `pillow` only (no mlc_jax, no jax, no TensorFlow); any ONNX
runtime (TensorRT, OpenVINO, ...) takes model.onnx. Exported from {source}.

    python serve.py --k=3 photo.jpg other.png

    import serve                      # from inside this folder
    model = serve.load(".")
    model.predict(["photo.jpg"])      # float32 (N, {num_classes}) probabilities, labels.txt order
    model.top_k(["photo.jpg"], k=3)   # [[(label, probability), ...], ...]

Or without serve.py:

    import onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    probabilities = session.run(None, {{"images": images}})[0]  # uint8 (N, {size}, {size}, 3) RGB

`images` must already be {size} x {size} RGB uint8 (see preprocessing.json: resize '{resize}',
bilinear with antialiasing); normalisation and the {activation} happen inside the graph.
"""


def inference_function(model, activation):
  """nnx model -> (f(params, images) -> probabilities, params {name: np.ndarray}).

  params holds what a checkpoint keeps (parameters, batch statistics), keyed by '/'-joined
  Keras-style paths; everything else in the model (RNG streams) is fixed at its current value.
  """
  graphdef, saved, rest = nnx.split(model, models.SAVED, ...)
  pure = nnx.to_pure_dict(saved)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
  names = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in leaves]
  params = {name: np.asarray(leaf) for name, (_, leaf) in zip(names, leaves)}

  def f(params, images):
    state = nnx.state(nnx.merge(graphdef, saved, rest), models.SAVED)
    pure = jax.tree_util.tree_unflatten(treedef, [params[n] for n in names])
    nnx.replace_by_pure_dict(state, pure)
    logits = nnx.merge(graphdef, state, rest)(images, train=False).astype(jnp.float32)
    return jax.nn.softmax(logits) if activation == "softmax" else jax.nn.sigmoid(logits)

  return f, params


def export_function(f, params, image_size, platforms=PLATFORMS):
  """Traces f for uint8 (b, S, S, 3) images with a symbolic batch b -> jax.export.Exported."""
  (batch,) = jax.export.symbolic_shape("b")
  args = ({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in params.items()},
          jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.uint8))
  with conv.lax_only():  # no custom call to this process's oneDNN library in the file
    try:
      return jax.export.export(jax.jit(f), platforms=platforms)(*args)
    except Exception:  # an op with no lowering for some platform: this machine's alone then
      return jax.export.export(jax.jit(f))(*args)


def spec(*, image_size, resize, convention, activation, exif_orientation, max_pixels,
         thresholds):
  """preprocessing.json: what a picture needs before the exported model, and what comes out."""
  return {
      "image_size": int(image_size),
      "resize": resize,
      "interpolation": "bilinear, antialiased (tf.image.resize antialias=True), rounded to uint8",
      "decode": "mlc_jax.data.reader: EXIF orientation when exif_orientation; 16-bit keeps the "
                "high byte; palette to its colours; grey replicated; alpha dropped",
      "exif_orientation": bool(exif_orientation),
      "max_pixels": int(max_pixels),
      "input": {"dtype": "uint8", "layout": "NHWC", "channels": "RGB", "range": [0, 255]},
      "normalization": f"{convention} (inside the model: do not normalise)",
      "activation": activation,
      "output": "float32 (N, C) probabilities in labels.txt order",
      "thresholds": None if thresholds is None else [float(t) for t in thresholds],
  }


def preprocessing_spec(config, thresholds):
  """spec() of a run's config."""
  return spec(image_size=config.image_size, resize=config.data.resize,
              convention=models.preprocessing_of(config), activation=config.head.activation,
              exif_orientation=config.data.get("exif_orientation", True),
              max_pixels=config.data.get("max_pixels", reader.DEFAULT_MAX_PIXELS),
              thresholds=thresholds)


def _folder(output_dir, workdir=None):
  out = pathlib.Path(output_dir).expanduser()
  if out.exists() and not out.is_dir():
    raise UserError(f"--output={out} is a file; pass a folder for the export")
  if workdir is not None and out.resolve() == pathlib.Path(workdir).resolve():
    raise UserError(f"--output={out} is the workdir; pass a new folder for the export")
  return out


def write(output_dir, model, labels, spec_, fmt="stablehlo", source="a Classifier"):
  """Writes model (uint8 images -> probabilities), labels.txt, preprocessing.json, serve.py and
  README.md to output_dir in format fmt (stablehlo: inference.jax + params.npz, for jax; onnx:
  model.onnx, for onnxruntime). The model is converted before anything is written, so a model
  that cannot be exported leaves no folder behind. Returns the folder."""
  if fmt not in FORMATS:
    raise UserError(f"--format={fmt!r}: export writes one of {', '.join(FORMATS)} "
                    "(or keras_h5 from a run)")
  out = _folder(output_dir)
  size, activation = int(spec_["image_size"]), spec_["activation"]
  common = dict(source=source, num_classes=len(labels), size=size, resize=spec_["resize"],
                activation=activation)
  if fmt == "onnx":
    from mlc_jax.inference import onnx_graph  # noqa: PLC0415 - onnx is imported for this only
    proto = onnx_graph.build(model, len(labels), activation, size)
    out.mkdir(parents=True, exist_ok=True)
    (out / ONNX_FILE).write_bytes(proto.SerializeToString())
    spec_ = dict(spec_, format="onnx", opset=onnx_graph.OPSET)
    readme = ONNX_README.format(**common)
  else:
    f, params = inference_function(model, activation)
    exported = export_function(f, params, size)
    out.mkdir(parents=True, exist_ok=True)
    (out / FUNCTION_FILE).write_bytes(exported.serialize())
    np.savez(out / "params.npz", **params)
    spec_ = dict(spec_, format="stablehlo", platforms=list(exported.platforms),
                 jax_version=jax.__version__)
    readme = README.format(jax_version=jax.__version__, platforms=", ".join(exported.platforms),
                           **common)
  (out / "labels.txt").write_text("\n".join(labels) + "\n")
  (out / "preprocessing.json").write_text(json.dumps(spec_, indent=2) + "\n")
  serve = importlib.resources.files("mlc_jax").joinpath("resources/serve.py").read_text()
  (out / "serve.py").write_text(serve)
  (out / "README.md").write_text(readme)
  return out


def export(workdir, output_dir, which="best", stage=None, fmt="stablehlo"):
  """--mode=export: writes the run's model, labels and spec to output_dir (see `write`).

  The thresholds written are those tuned for the exported checkpoint. Returns the output folder.
  """
  r = restore.restore(workdir, which, stage)
  _folder(output_dir, r.workdir)
  spec_ = dict(preprocessing_spec(r.config, r.thresholds), checkpoint=r.name)
  out = write(output_dir, r.model, r.labels, spec_, fmt,
              source=f"`{r.workdir}` (checkpoint {r.name}, '{which}')")
  print(f"exported {r.workdir} ({r.name}, {which}) to {out} as {fmt}: {len(r.labels)} labels, "
        f"{int(r.config.image_size)} px")
  return out


def export_keras_h5(workdir, output, which="best", stage=None):
  """--mode=export --format=keras_h5: the run's VGG weights as one Keras HDF5 file at output.

  The file holds the backbone (and, when the head is one dense layer, that layer as
  'predictions'; models.keras_layers) in the layout model.weights=FILE and Keras's
  `load_weights` read, plus root attributes naming its preprocessing convention (which
  model.weights then applies), labels, source checkpoint and model settings. Returns the path.
  """
  out = pathlib.Path(output).expanduser()
  if out.suffix.lower() not in (".h5", ".hdf5"):
    raise UserError(f"--output={out}: --format=keras_h5 writes one file; give a name ending .h5")
  if out.is_dir():
    raise UserError(f"--output={out} is a folder; give a file name ending .h5")
  r = restore.restore(workdir, which, stage)
  config, layers = r.config, models.keras_layers(r.model)
  top = "predictions" in layers
  attrs = {"preprocessing": models.preprocessing_of(config), "checkpoint": r.name,
           "dataset": config.dataset,
           "workdir": str(r.workdir), "arch": config.model.arch, "width": config.model.width,
           "batch_norm": config.model.batch_norm, "include_top": config.model.include_top,
           "pooling": config.model.pooling, "image_size": config.image_size,
           "labels": json.dumps(list(r.labels) if top else [])}
  weights_lib.write_keras_h5(out, layers, attrs)
  what = (f"with its {len(r.labels)}-class head as 'predictions'" if top else
          "backbone only (a head with a hidden layer has no place in a Keras VGG file)")
  print(f"wrote {out}: {len(layers)} layers of {config.model.arch} from {r.name}, {what}; "
        f"use it with --config.model.weights={out}")
  return out
