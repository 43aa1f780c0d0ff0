"""2-D convolution through oneDNN on the CPU (jax.ffi), `lax.conv_general_dilated` elsewhere.

`conv_general_dilated` takes lax's arguments (it is what the models' nnx.Conv layers call). On the
CPU backend, for NHWC/HWIO/NHWC float32 or bfloat16 operands of one dtype, no dilation and no
feature groups, it runs the forward convolution and the gradients as oneDNN primitives in
csrc/onednn_conv.cc (built by `make install` into this folder), tied together with jax.custom_vjp
(symbolic zeros: only the gradients asked for are computed, the input and weight gradients in one
call when both are); anything else, and every GPU/TPU, goes to lax.conv. Paddings are lax's own
(lax.padtype_to_pads), passed to oneDNN explicitly. `Conv`, an nnx.Conv, also fuses its bias and
an optional ReLU into the primitive (`onednn_conv_bias`), the bias gradient coming from
the weight gradient's primitive.

On by default on the CPU (the op equals lax.conv within 1e-5 on every VGG16 layer and both
gradients; VGG16's fine-tune steps at 224 and 112 px ran 1.13-1.22x faster than with lax.conv,
BENCHMARKS.md). Where the
library is missing or does not load, the convolutions use lax.conv and a warning says why, once;
MLC_JAX_ONEDNN=0 turns the op off, saying so. MLC_JAX_ONEDNN_LIB points at another build of the
library; MLC_JAX_ONEDNN_THREADS sets the threads of each convolution (default: one per available
core); MLC_JAX_ONEDNN_BLOCKED which kinds use oneDNN's blocked activation layout (default none;
csrc/onednn_conv.cc).
"""
import contextlib
import ctypes
import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

LIB_NAME = "libmlc_conv.so"
TARGETS = {"forward": "MlcConvForward", "data": "MlcConvBackwardData",
           "weights": "MlcConvBackwardWeights", "backward": "MlcConvBackward",
           "bias_forward": "MlcConvBiasForward", "weights_bias": "MlcConvBackwardWeightsBias",
           "backward_bias": "MlcConvBackwardBias"}
NHWC = ("NHWC", "HWIO", "NHWC")
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

log = logging.getLogger(__name__)
_LIB = {"tried": False, "lib": None, "why": None}
_LAX_ONLY = [0]  # > 0 inside lax_only()


def library_path():
  """Where the built library is looked for (MLC_JAX_ONEDNN_LIB overrides)."""
  return os.environ.get("MLC_JAX_ONEDNN_LIB") or os.path.join(os.path.dirname(__file__), LIB_NAME)


def threads():
  """Threads of each oneDNN convolution: MLC_JAX_ONEDNN_THREADS, else the cores this process may use."""
  value = os.environ.get("MLC_JAX_ONEDNN_THREADS", "")
  return int(value) if value.strip() else len(os.sched_getaffinity(0))


def library():
  """The loaded library with its FFI targets registered, or None (the reason logged once)."""
  if _LIB["tried"]:
    return _LIB["lib"]
  _LIB["tried"] = True
  path = library_path()
  setting = os.environ.get("MLC_JAX_ONEDNN", "").strip().lower()
  if setting in ("0", "false", "off", "no"):
    _LIB["why"] = "MLC_JAX_ONEDNN=0 turned the oneDNN convolutions off"
  elif not os.path.exists(path):
    _LIB["why"] = f"{path} is not built (`make install` builds it; BUILD.md)"
  else:
    # libgomp spins its idle threads for a while after each convolution, stealing the cores from
    # XLA's own threads that run next; passive waiting lets them sleep (read when libgomp loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
      lib = ctypes.cdll.LoadLibrary(path)
      for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(f"mlc_onednn_conv_{target}",
                                    jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
      lib.mlc_conv_set_threads(ctypes.c_int(threads()))
      _LIB["lib"] = lib
    except (OSError, AttributeError, ValueError) as e:
      _LIB["why"] = f"{path} did not load: {e}"
  if _LIB["why"]:
    log.warning("CPU convolutions use lax.conv: %s", _LIB["why"])
  return _LIB["lib"]


def available():
  """True when convolutions traced now go through oneDNN (CPU backend, library loaded)."""
  return not _LAX_ONLY[0] and jax.default_backend() == "cpu" and library() is not None


@contextlib.contextmanager
def lax_only():
  """Traces inside use lax.conv: for programs serialized with jax.export, which must not hold a
  custom call to this process's library."""
  _LAX_ONLY[0] += 1
  try:
    yield
  finally:
    _LAX_ONLY[0] -= 1


def in_lax_only():
  """True inside lax_only(): what a cache of jitted functions must key on (a jit's own trace
  cache does not see it)."""
  return _LAX_ONLY[0] > 0


def why_not():
  """Why the oneDNN convolutions are off (None when they are on or not yet asked for)."""
  return _LIB["why"]


def _pads(x_shape, w_shape, strides, padding):
  if isinstance(padding, str):
    return tuple(tuple(int(v) for v in p)
                 for p in lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _out_size(size, k, stride, pad):
  return (size + pad[0] + pad[1] - k) // stride + 1


def _out_shape(x_shape, w_shape, strides, pads):
  n, h, wd, _ = x_shape
  kh, kw, _, o = w_shape
  return (n, _out_size(h, kh, strides[0], pads[0]), _out_size(wd, kw, strides[1], pads[1]), o)


def _call(target, result_shape, dtype, *operands, strides, pads, **attrs):
  if library() is None:  # registers the targets on first use (conv_general_dilated checks first)
    raise RuntimeError(f"the oneDNN convolutions are off: {why_not()}")
  shapes = result_shape if isinstance(result_shape, list) else [result_shape]
  call = jax.ffi.ffi_call(f"mlc_onednn_conv_{target}",
                          [jax.ShapeDtypeStruct(shape, dtype) for shape in shapes],
                          vmap_method="sequential")
  out = call(*operands, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
             pad_top=np.int64(pads[0][0]), pad_bottom=np.int64(pads[0][1]),
             pad_left=np.int64(pads[1][0]), pad_right=np.int64(pads[1][1]),
             **{k: np.int64(v) for k, v in attrs.items()})
  return out if isinstance(result_shape, list) else out[0]


def onednn_conv(x, w, strides, pads):
  """NHWC x, HWIO w (one dtype) -> NHWC y through oneDNN; strides (sh, sw), pads ((t, b), (l, r))."""
  return _conv(x, w, strides, pads, (tuple(x.shape), tuple(w.shape)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, shapes):
  del shapes  # the backward's: x and w are kept only where a gradient needs them
  return _call("forward", _out_shape(x.shape, w.shape, strides, pads), x.dtype, x, w,
               strides=strides, pads=pads)


def _forward(x, w, strides, pads, shapes):
  # Symbolic zeros: x.perturbed / w.perturbed say which gradients are asked for, so the backward
  # computes only those (a frozen kernel's gradient never; nor the input gradient of the lowest
  # trained layer), both in one call when both are asked for.
  y = _conv(x.value, w.value, strides, pads, shapes)
  return y, (x.value if w.perturbed else None, w.value if x.perturbed else None)


def _backward(strides, pads, shapes, residuals, dy):
  x, w = residuals  # x kept iff dw is wanted, w iff dx is
  if isinstance(dy, jax.custom_derivatives.SymbolicZero) or (x is None and w is None):
    return None, None
  dtype = (x if x is not None else w).dtype
  dy = dy.astype(dtype)
  if x is not None and w is not None:
    return tuple(_call("backward", list(shapes), dtype, x, dy, w, strides=strides, pads=pads))
  if w is not None:
    return _call("data", shapes[0], dtype, dy, w, strides=strides, pads=pads), None
  return None, _call("weights", shapes[1], dtype, x, dy, strides=strides, pads=pads)


_conv.defvjp(_forward, _backward, symbolic_zeros=True)


def onednn_conv_bias(x, w, b, strides, pads, relu=False):
  """onednn_conv(x, w) + b (b: (O,)), then a ReLU when `relu`, all in the one oneDNN primitive;
  the bias gradient comes from the weight gradient's primitive (XLA's own sum of dy over N, H, W
  ran at 1-5 ns an element, 1-2% of make demo's fine-tune step)."""
  return _conv_bias(x, w, b, strides, pads, bool(relu), (tuple(x.shape), tuple(w.shape)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _conv_bias(x, w, b, strides, pads, relu, shapes):
  del shapes
  return _call("bias_forward", _out_shape(x.shape, w.shape, strides, pads), x.dtype, x, w, b,
               strides=strides, pads=pads, relu=relu)


def _bias_forward(x, w, b, strides, pads, relu, shapes):
  y = _conv_bias(x.value, w.value, b.value, strides, pads, relu, shapes)
  # A layer's kernel and bias train together: both gradients whenever either is asked for.
  params = w.perturbed or b.perturbed
  return y, (x.value if params else None, w.value if x.perturbed else None, y if relu else None)


def _bias_backward(strides, pads, relu, shapes, residuals, dy):
  x, w, y = residuals  # x kept iff dw, db are wanted, w iff dx is, y iff the ReLU is fused
  if isinstance(dy, jax.custom_derivatives.SymbolicZero) or (x is None and w is None):
    return None, None, None
  dtype = (x if x is not None else w).dtype
  dy = dy.astype(dtype)
  if relu:  # jax.nn.relu's gradient: 0 where the output is 0
    dy = jnp.where(y > 0, dy, jnp.zeros((), dtype))
  bias = (shapes[1][3],)
  if x is not None and w is not None:
    return tuple(_call("backward_bias", [shapes[0], shapes[1], bias], dtype, x, dy, w,
                       strides=strides, pads=pads))
  if w is not None:
    return _call("data", shapes[0], dtype, dy, w, strides=strides, pads=pads), None, None
  dw, db = _call("weights_bias", [shapes[1], bias], dtype, x, dy, strides=strides, pads=pads)
  return None, dw, db


_conv_bias.defvjp(_bias_forward, _bias_backward, symbolic_zeros=True)


def _supported(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
               batch_group_count, preferred_element_type, out_sharding):
  if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or (1, 1))) or any(d != 1 for d in (rhs_dilation or (1, 1))):
    return False
  if out_sharding is not None or jnp.dtype(lhs.dtype) not in DTYPES or lhs.dtype != rhs.dtype:
    return False
  if preferred_element_type is not None and jnp.dtype(preferred_element_type) != lhs.dtype:
    return False
  if dimension_numbers is None:
    return False  # lax's default is NCHW/OIHW
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc and available()


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, out_sharding=None):
  """lax.conv_general_dilated with oneDNN doing the supported CPU cases (the module docstring)."""
  if _supported(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                batch_group_count, preferred_element_type, out_sharding):
    strides = tuple(int(s) for s in window_strides)
    return onednn_conv(lhs, rhs, strides, _pads(lhs.shape, rhs.shape, strides, padding))
  kwargs = {} if out_sharding is None else {"out_sharding": out_sharding}
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, batch_group_count,
                                  precision, preferred_element_type, **kwargs)


class Conv(nnx.Conv):
  """nnx.Conv (same parameters, same results) whose CPU convolutions run through oneDNN, with the
  bias and an optional ReLU (`conv(x, relu=True)` = jax.nn.relu(conv(x))) fused into the
  primitive where it can: float32 or bfloat16, a bias, no mask, 2-D NHWC, no dilation or feature
  groups, the library on. Anything else is nnx.Conv's own call with conv_general_dilated above
  (then the ReLU).
  """

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("conv_general_dilated", conv_general_dilated)
    super().__init__(*args, **kwargs)

  def __call__(self, inputs, *, relu=False):
    if self._fusable(inputs):
      x, kernel, bias = self.promote_dtype((inputs, self.kernel[...], self.bias[...]),
                                           dtype=self.dtype)
      if _supported(x, kernel, None, None, NHWC, self.feature_group_count, 1, None, None):
        strides = self.strides or 1
        strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
        return onednn_conv_bias(x, kernel, bias, strides,
                                _pads(x.shape, kernel.shape, strides, self.padding), relu)
    y = super().__call__(inputs)
    return jax.nn.relu(y) if relu else y

  def _fusable(self, inputs):
    """True when nnx.Conv's call would be one plain 2-D convolution plus the bias."""
    def ones(d):
      return d is None or all(v == 1 for v in ((d,) if isinstance(d, int) else d))
    pad = self.padding
    pairs = (isinstance(pad, (tuple, list)) and len(pad) == 2
             and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pad))
    return (self.bias is not None and self.mask is None and inputs.ndim == 4
            and len(self.kernel_size) == 2 and self.preferred_element_type is None
            and ones(self.input_dilation) and ones(self.kernel_dilation)
            and (pad in ("SAME", "VALID") or pairs))
