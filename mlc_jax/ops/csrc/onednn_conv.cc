// 2-D convolutions on the CPU through oneDNN, as XLA FFI handlers (jax.ffi), for mlc_jax/ops/conv.py.
//
// Three handlers, each one oneDNN primitive: forward (x, w -> y), input gradient (dy, w -> dx) and
// weight gradient (x, dy -> dw). Layouts are JAX's: activations NHWC, kernels HWIO; float32 or
// bfloat16 (all operands the same type). Strides and explicit paddings come as attributes, the
// paddings already computed in Python the way lax computes them. Activations are passed to oneDNN
// in NHWC as they are; kernels are reordered into the layout the primitive picked (format `any`).
// Primitives are cached by shape; one mutex serialises calls (each uses every thread it is given:
// mlc_conv_set_threads) so that two convolutions XLA runs side by side do not oversubscribe cores.
#include <omp.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;

namespace {

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// kind, dtype, N H W C, O KH KW, OH OW, sh sw, pt pb pl pr
using Key = std::array<int64_t, 17>;

struct Entry {
  dnnl::primitive prim;
  memory::desc act_in, wei, act_out;  // the primitive's own descriptors
  memory::desc user_wei;              // HWIO as JAX holds it
  bool reorder = false;               // kernel layout differs from HWIO
  dnnl::reorder wei_reorder;          // HWIO -> primitive (forward, data) or back (weights)
  std::unique_ptr<memory> wei_buf;    // the kernel in the primitive's layout
};

struct State {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::mutex mu;
  std::map<Key, std::unique_ptr<Entry>> cache;
  int threads = 0;  // 0: OpenMP's default
};

State& state() {
  static State* s = new State();  // never destroyed: XLA may call in during interpreter exit
  return *s;
}

memory::data_type to_dnnl(ffi::DataType t) {
  return t == ffi::DataType::BF16 ? memory::data_type::bf16 : memory::data_type::f32;
}

// Builds (or finds) the primitive for `key`. Caller holds the mutex.
Entry& lookup(const Key& k) {
  State& s = state();
  auto it = s.cache.find(k);
  if (it != s.cache.end()) return *it->second;
  auto dt = k[1] == 1 ? memory::data_type::bf16 : memory::data_type::f32;
  memory::dims src_dims = {k[2], k[5], k[3], k[4]};   // N C H W
  memory::dims wei_dims = {k[6], k[5], k[7], k[8]};   // O I KH KW
  memory::dims dst_dims = {k[2], k[6], k[9], k[10]};  // N O OH OW
  memory::dims strides = {k[11], k[12]}, pad_l = {k[13], k[15]}, pad_r = {k[14], k[16]};
  memory::desc src(src_dims, dt, Tag::nhwc), dst(dst_dims, dt, Tag::nhwc);
  memory::desc wei_any(wei_dims, dt, Tag::any);
  auto fwd = dnnl::convolution_forward::primitive_desc(
      s.engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      wei_any, dst, strides, pad_l, pad_r);
  auto e = std::make_unique<Entry>();
  e->user_wei = memory::desc(wei_dims, dt, Tag::hwio);
  if (k[0] == kForward) {
    e->prim = dnnl::convolution_forward(fwd);
    e->act_in = fwd.src_desc(), e->wei = fwd.weights_desc(), e->act_out = fwd.dst_desc();
  } else if (k[0] == kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        s.engine, dnnl::algorithm::convolution_direct, src, wei_any, dst, strides, pad_l, pad_r,
        fwd);
    e->prim = dnnl::convolution_backward_data(pd);
    e->act_in = pd.diff_dst_desc(), e->wei = pd.weights_desc(), e->act_out = pd.diff_src_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        s.engine, dnnl::algorithm::convolution_direct, src, wei_any, dst, strides, pad_l, pad_r,
        fwd);
    e->prim = dnnl::convolution_backward_weights(pd);
    e->act_in = pd.src_desc(), e->wei = pd.diff_weights_desc(), e->act_out = pd.diff_dst_desc();
  }
  e->reorder = e->wei != e->user_wei;
  if (e->reorder) {
    e->wei_buf = std::make_unique<memory>(e->wei, s.engine);
    e->wei_reorder = k[0] == kBackwardWeights
                         ? dnnl::reorder(dnnl::reorder::primitive_desc(s.engine, e->wei, s.engine,
                                                                       e->user_wei))
                         : dnnl::reorder(dnnl::reorder::primitive_desc(s.engine, e->user_wei,
                                                                       s.engine, e->wei));
  }
  Entry& ref = *e;
  s.cache.emplace(k, std::move(e));
  return ref;
}

ffi::Error check(const ffi::AnyBuffer& b, ffi::DataType t, const char* what) {
  if (b.dimensions().size() != 4)
    return ffi::Error::InvalidArgument(std::string(what) + ": expected a rank-4 array");
  if (b.element_type() != t)
    return ffi::Error::InvalidArgument(std::string(what) + ": every operand must have one dtype");
  return ffi::Error::Success();
}

// x: N H W C (input side), w: KH KW C O, y: N OH OW O. `a`, `b`, `out` are the handler's two
// operands and result, whose roles depend on the kind.
ffi::Error run(Kind kind, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
               int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  ffi::DataType t = a.element_type();
  if (t != ffi::DataType::F32 && t != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument("onednn conv: float32 or bfloat16 only");
  for (auto [buf, name] : {std::pair<const ffi::AnyBuffer*, const char*>{&a, "operand 0"},
                           {&b, "operand 1"}, {&(*out), "result"}}) {
    ffi::Error e = check(*buf, t, name);
    if (e.failure()) return e;
  }
  // Shapes of x, w, y by kind: forward (x, w) -> y; data (dy, w) -> dx; weights (x, dy) -> dw.
  const ffi::AnyBuffer& x = kind == kBackwardData ? *out : a;
  const ffi::AnyBuffer& w = kind == kBackwardWeights ? *out : b;
  const ffi::AnyBuffer& y = kind == kForward ? *out : (kind == kBackwardData ? a : b);
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y.dimensions();
  if (wd[2] != xd[3] || wd[3] != yd[3] || xd[0] != yd[0])
    return ffi::Error::InvalidArgument("onednn conv: operand shapes do not match");
  Key key = {kind, t == ffi::DataType::BF16 ? 1 : 0, xd[0], xd[1], xd[2], xd[3], wd[3], wd[0],
             wd[1], yd[1], yd[2], sh, sw, pt, pb, pl, pr};
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  try {
    if (s.threads > 0) omp_set_num_threads(s.threads);  // per calling thread in OpenMP
    Entry& e = lookup(key);
    memory xm(e.act_in, s.engine), ym(e.act_out, s.engine);
    memory wm(e.user_wei, s.engine, w.untyped_data());
    memory* wp = e.reorder ? e.wei_buf.get() : &wm;
    if (kind != kBackwardWeights && e.reorder) e.wei_reorder.execute(s.stream, wm, *wp);
    if (kind == kForward) {
      xm.set_data_handle(a.untyped_data()), ym.set_data_handle(out->untyped_data());
      e.prim.execute(s.stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, *wp}, {DNNL_ARG_DST, ym}});
    } else if (kind == kBackwardData) {
      xm.set_data_handle(a.untyped_data()), ym.set_data_handle(out->untyped_data());
      e.prim.execute(s.stream,
                     {{DNNL_ARG_DIFF_DST, xm}, {DNNL_ARG_WEIGHTS, *wp}, {DNNL_ARG_DIFF_SRC, ym}});
    } else {
      xm.set_data_handle(a.untyped_data()), ym.set_data_handle(b.untyped_data());
      e.prim.execute(s.stream,
                     {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_DIFF_WEIGHTS, *wp}});
      if (e.reorder) e.wei_reorder.execute(s.stream, *wp, wm);
    }
    s.stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("oneDNN: ") + err.what());
  }
  return ffi::Error::Success();
}

#define MLC_IMPL(name, kind)                                                                \
  ffi::Error name(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,      \
                  int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) { \
    return run(kind, a, b, out, sh, sw, pt, pb, pl, pr);                                    \
  }
MLC_IMPL(ConvForward, kForward)
MLC_IMPL(ConvBackwardData, kBackwardData)
MLC_IMPL(ConvBackwardWeights, kBackwardWeights)

#define MLC_BIND                                                                          \
  ffi::Ffi::Bind()                                                                        \
      .Arg<ffi::AnyBuffer>()                                                              \
      .Arg<ffi::AnyBuffer>()                                                              \
      .Ret<ffi::AnyBuffer>()                                                              \
      .Attr<int64_t>("stride_h")                                                          \
      .Attr<int64_t>("stride_w")                                                          \
      .Attr<int64_t>("pad_top")                                                           \
      .Attr<int64_t>("pad_bottom")                                                        \
      .Attr<int64_t>("pad_left")                                                          \
      .Attr<int64_t>("pad_right")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MlcConvForward, ConvForward, MLC_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MlcConvBackwardData, ConvBackwardData, MLC_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MlcConvBackwardWeights, ConvBackwardWeights, MLC_BIND);

extern "C" {
// Threads each convolution uses (0: OpenMP's default, every core).
void mlc_conv_set_threads(int n) {
  std::lock_guard<std::mutex> lock(state().mu);
  state().threads = n;
}
// Primitives built so far (tests: the cache is keyed by shape).
int mlc_conv_cache_size() {
  std::lock_guard<std::mutex> lock(state().mu);
  return static_cast<int>(state().cache.size());
}
// oneDNN's version, e.g. 30200 for 3.2.0.
int mlc_conv_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
}
