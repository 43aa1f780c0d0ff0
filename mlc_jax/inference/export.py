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
  manifest.json       written last: the model format, each file's size and sha256, the labels
                      count, the model's output width and the source checkpoint
The folder is built beside --output and renamed into place, so it holds a whole export or none;
an earlier export there is replaced as a whole (no stale model file is left), a folder holding
anything else is refused. serve.py (and `check` here, the same code) holds a folder against its
manifest before loading anything, and refuses a truncated, swapped or edited file in one line.
StableHLO: the weights travel beside the function rather than inside it as constants, so it stays
small whatever the model's size, and the weights can be read (or swapped) without jax.
"""
import importlib.resources
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mlc_jax import models, restore
from mlc_jax.models import weights as weights_lib
from mlc_jax.errors import UserError
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
    # the model's logits are float32 (models' contract): the scores of Classifier.predict
    return models.probabilities(graphdef, nnx.merge_state(state, rest), images, activation)

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


def spec(classifier):
  """preprocessing.json of a Classifier: what a picture needs before the exported model, and what
  comes out."""
  convention = getattr(classifier.model, "backbone", classifier.model).preprocessing
  thresholds = classifier.thresholds
  out = {
      "image_size": int(classifier.image_size),
      "resize": classifier.resize,
      "interpolation": "bilinear, antialiased (tf.image.resize antialias=True), rounded to uint8",
      "decode": "mlc_jax.data.reader: EXIF orientation when exif_orientation; 16-bit keeps the "
                "high byte; palette to its colours; grey replicated; alpha dropped",
      "exif_orientation": bool(classifier.exif_orientation),
      "max_pixels": int(classifier.max_pixels),
      "input": {"dtype": "uint8", "layout": "NHWC", "channels": "RGB", "range": [0, 255]},
      "normalization": f"{convention} (inside the model: do not normalise)",
      "activation": classifier.activation,
      "output": "float32 (N, C) probabilities in labels.txt order",
      "thresholds": None if thresholds is None else [float(t) for t in thresholds],
  }
  if classifier.checkpoint:
    out["checkpoint"] = classifier.checkpoint
  return out


def check_output(output_dir, workdir=None):
  """The export folder, or UserError before any work: a file, the workdir itself, or a folder
  holding files that are not an earlier export."""
  out = _folder(output_dir, workdir)
  _replaceable(out)
  return out


def _folder(output_dir, workdir=None):
  out = pathlib.Path(output_dir).expanduser()
  if out.exists() and not out.is_dir():
    raise UserError(f"--output={out} is a file; pass a folder for the export")
  if workdir is not None and out.resolve() == pathlib.Path(workdir).resolve():
    raise UserError(f"--output={out} is the workdir; pass a new folder for the export")
  return out


def serve_module():
  """mlc_jax/resources/serve.py as a module: its `check` is the one manifest check."""
  path = importlib.resources.files("mlc_jax").joinpath("resources/serve.py")
  spec = importlib.util.spec_from_file_location("mlc_jax_export_serve", str(path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def check(folder):
  """An export folder -> its manifest; UserError (one line naming the file) when it fails it."""
  serve = serve_module()
  try:
    return serve.check(folder)
  except serve.ExportError as e:
    raise UserError(str(e)) from None


def _replaceable(out):
  """UserError when out holds files that are not an earlier export (nothing to lose but those)."""
  if not out.is_dir():
    return
  known = {"manifest.json", "labels.txt", "preprocessing.json", "serve.py", "README.md",
           "__pycache__", ONNX_FILE, FUNCTION_FILE, "params.npz"}
  other = sorted(p.name for p in out.iterdir() if p.name not in known)
  if other:
    raise UserError(f"--output={out} holds files that are not an mlc_jax export ({', '.join(other[:3])}"
                    f"{', ...' if len(other) > 3 else ''}); pass an empty or new folder")


def _publish(staging, out):
  """Renames the finished staging folder to out, replacing an earlier export there as a whole."""
  if out.is_dir():
    old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(staging, out)


def _manifest(folder, fmt, labels, width, checkpoint, source):
  serve = serve_module()
  files = {p.name: {"bytes": p.stat().st_size, "sha256": serve.sha256(p)}
           for p in sorted(folder.iterdir()) if p.is_file()}
  return {"kind": serve.MANIFEST_KIND, "version": 1, "model_format": fmt, "files": files,
          "labels": len(labels), "output_width": int(width), "checkpoint": checkpoint,
          "source": source}


def write(output_dir, classifier, fmt="stablehlo", source=None):
  """Writes a Classifier's model (uint8 images -> probabilities), labels.txt, preprocessing.json
  (`spec`), serve.py, README.md and, last, manifest.json to output_dir in format fmt (stablehlo:
  inference.jax + params.npz, for jax; onnx: model.onnx, for onnxruntime). Everything is written
  to a folder beside output_dir and renamed into place, so a failure or a kill leaves the earlier
  folder as it was; an earlier export there is replaced whole, other files there are refused
  before any work. Returns the folder."""
  if fmt not in FORMATS:
    raise UserError(f"--format={fmt!r}: export writes one of {', '.join(FORMATS)} "
                    "(or keras_h5 from a run)")
  out = check_output(output_dir)
  model, labels, spec_ = classifier.model, list(classifier.labels), spec(classifier)
  source = source or (f"checkpoint {classifier.checkpoint}" if classifier.checkpoint
                      else "a Classifier")
  size, activation = int(spec_["image_size"]), spec_["activation"]
  common = dict(source=source, num_classes=len(labels), size=size, resize=spec_["resize"],
                activation=activation)
  if fmt == "onnx":
    from mlc_jax.inference import onnx_graph  # noqa: PLC0415 - onnx is imported for this only
    proto = onnx_graph.build(model, len(labels), activation, size)
  else:
    f, params = inference_function(model, activation)
    exported = export_function(f, params, size)
    width = exported.out_avals[0].shape[-1]
  out.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
  try:
    staging.chmod(0o755)  # mkdtemp's 0o700 would become the export's
    _write_files(staging, fmt, proto if fmt == "onnx" else (exported, params), labels, spec_,
                 common)
    if fmt == "onnx":
      width = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    manifest = _manifest(staging, fmt, labels, width, spec_.get("checkpoint"), source)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    _publish(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return out


def _write_files(out, fmt, converted, labels, spec_, common):
  if fmt == "onnx":
    from mlc_jax.inference import onnx_graph  # noqa: PLC0415
    (out / ONNX_FILE).write_bytes(converted.SerializeToString())
    spec_ = dict(spec_, format="onnx", opset=onnx_graph.OPSET)
    readme = ONNX_README.format(**common)
  else:
    exported, params = converted
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
  if not isinstance(r.model.backbone, models.VGG):
    raise UserError(f"--format=keras_h5 writes VGG's Keras layout; this run's backbone is "
                    f"{r.config.model.arch}: export it with --format=stablehlo")
  config, layers = r.config, models.keras_layers(r.model)
  top = "predictions" in layers
  attrs = {"preprocessing": models.preprocessing_of(config), "checkpoint": r.name,
           "dataset": config.dataset,
           "workdir": str(r.workdir), "arch": config.model.arch, "width": config.model.width,
           "batch_norm": config.model.batch_norm, "include_top": config.model.include_top,
           "pooling": config.model.pooling, "image_size": config.image_size,
           "blocks": int(config.model.get("blocks", 5)),
           "labels": json.dumps(list(r.labels) if top else [])}
  weights_lib.write_keras_h5(out, layers, attrs)
  what = (f"with its {len(r.labels)}-class head as 'predictions'" if top else
          "backbone only (a head with a hidden layer has no place in a Keras VGG file)")
  print(f"wrote {out}: {len(layers)} layers of {config.model.arch} from {r.name}, {what}; "
        f"use it with --config.model.weights={out}")
  return out
