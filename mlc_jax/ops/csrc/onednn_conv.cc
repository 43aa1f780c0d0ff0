// 2-D convolutions on the CPU through oneDNN, as XLA FFI handlers (jax.ffi), for mlc_jax/ops/conv.py.
//
// Each handler runs one or two oneDNN primitives: forward (x, w -> y; with a bias and optionally a
// ReLU fused in: x, w, b -> y), input gradient (dy, w -> dx), weight gradient (x, dy -> dw; with
// the bias gradient: -> dw, db), and both gradients in one call (x, dy, w -> dx, dw[, db]).
// Layouts are JAX's: activations NHWC, kernels HWIO, biases (O); float32 or bfloat16 (all operands
// the same type). Strides and explicit paddings come as attributes, the paddings already computed
// in Python the way lax computes them. Kernels are reordered into the layout the primitive picked
// (format `any`; kernel_layout.h); activations are passed in NHWC as they are, except for the kinds
// MLC_JAX_ONEDNN_BLOCKED names (default: none), whose activations are reordered into oneDNN's
// blocked layout (buffers kept with the cached primitive).
// Primitives are cached by shape; one mutex serialises calls (each uses every thread it is given:
// mlc_conv_set_threads) so that two convolutions XLA runs side by side do not oversubscribe cores.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "kernel_layout.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;
using mlc_conv::KernelLayout;

namespace {

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// kind, dtype, N H W C, O KH KW, OH OW, sh sw, pt pb pl pr, bias (forward: an input; weight
// gradient: its gradient as a second result), relu (forward only: fused after the bias)
using Key = std::array<int64_t, 19>;

struct Geometry {
  int64_t sh, sw, pt, pb, pl, pr;
};

// One operand of a primitive: the layout JAX holds (NHWC or HWIO), the primitive's own, and when
// they differ a buffer in the primitive's layout (kept with the primitive), filled or read by
// mlc_conv::copy_kernel for the kernel layouts it knows, by oneDNN's reorders otherwise.
struct Operand {
  int arg = 0;  // DNNL_ARG_*
  memory::desc user, prim;
  bool reorder = false;
  KernelLayout layout = mlc_conv::kOther;
  int block = 0;
  dnnl::reorder to_prim, to_user;  // layout kOther only
  std::unique_ptr<memory> buf;
};

struct Entry {
  dnnl::primitive prim;
  Operand ops[3];  // the handler's operand 0, operand 1 and result, in that order
  int bias_arg = 0;  // DNNL_ARG_BIAS (forward) or DNNL_ARG_DIFF_BIAS (weight gradient); 0: none
  memory::desc bias;  // (O), plain
  memory::desc scratch;  // the primitive's scratchpad (user-managed: State::scratch)
};

struct State {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::mutex mu;
  std::map<Key, std::unique_ptr<Entry>> cache;
  int threads = 0;   // 0: OpenMP's default
  int blocked = 0;   // bit k set: kind k lets oneDNN pick the activations' layout (reordered)
  // One scratchpad for every primitive (calls are serialised), grown to the largest asked for and
  // kept: oneDNN's own ("library" mode) is allocated and freed around each execution, so each
  // call faulted its pages in again (up to 10,000 page faults a VGG16 step at 224 px).
  std::unique_ptr<memory> scratch;
  size_t scratch_size = 0;
};

State& state() {
  static State* s = [] {
    auto* st = new State();  // never destroyed: XLA may call in during interpreter exit
    // Bits: 1 forward, 2 input gradient, 4 weight gradient. Default 0: every kind on NHWC. The
    // forward and input gradient (brgconv, which takes NHWC as is) lost 10-25% with reorders. The
    // weight gradient (jit:avx512_core) once ran faster on the blocked layout, but since the
    // scratchpad is kept (State::scratch) NHWC is level or ahead, reorders saved: VGG16 steps 2-5%
    // faster at 56 and 112 px, level at 224 px; ResNet-50's top-block step 5-15% faster.
    const char* v = std::getenv("MLC_JAX_ONEDNN_BLOCKED");
    st->blocked = v && *v ? std::atoi(v) : 0;
    return st;
  }();
  return *s;
}

void set_operand(Operand& o, int arg, const memory::desc& user, const memory::desc& prim,
                 const dnnl::engine& eng) {
  o.arg = arg, o.user = user, o.prim = prim, o.reorder = user != prim;
  if (!o.reorder) return;
  o.buf = std::make_unique<memory>(prim, eng);
  std::tie(o.layout, o.block) = mlc_conv::find_kernel_layout(user, prim);
  if (o.layout == mlc_conv::kOther) {
    o.to_prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, user, eng, prim));
    o.to_user = dnnl::reorder(dnnl::reorder::primitive_desc(eng, prim, eng, user));
  }
}

bool is_gemm(const dnnl::primitive_desc_base& pd) {
  return std::string(pd.impl_info_str()).find("gemm") != std::string::npos;
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
  memory::desc src_user(src_dims, dt, Tag::nhwc), dst_user(dst_dims, dt, Tag::nhwc);
  memory::desc wei_user(wei_dims, dt, Tag::hwio), wei(wei_dims, dt, Tag::any);
  memory::desc bias = k[17] ? memory::desc({k[6]}, dt, Tag::a) : memory::desc();
  auto e = std::make_unique<Entry>();
  // Blocked activations (format `any`) only for float32 and only where oneDNN answers with a
  // blocked direct kernel: for some bf16 shapes oneDNN 3.2 picks a plain-layout gemm weight
  // gradient whose im2col crashes; NHWC then, which every kind takes as is.
  bool blocked = (s.blocked >> k[0]) & 1 && dt == memory::data_type::f32;
  dnnl::primitive_attr attr, fwd_attr;  // fwd_attr: the forward's own, with the fused ReLU
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  fwd_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (k[18]) {
    dnnl::post_ops relu;
    relu.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    fwd_attr.set_post_ops(relu);
  }
  for (int attempt = 0; attempt < 2; ++attempt, blocked = false) {
    Tag act = blocked ? Tag::any : Tag::nhwc;
    memory::desc src(src_dims, dt, act), dst(dst_dims, dt, act);
    auto fwd = dnnl::convolution_forward::primitive_desc(
        s.engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
        wei, bias, dst, strides, pad_l, pad_r, k[0] == kForward ? fwd_attr : attr);
    if (k[0] == kForward) {  // (x, w[, b]) -> y
      if (blocked && is_gemm(fwd)) continue;
      e->prim = dnnl::convolution_forward(fwd);
      e->scratch = fwd.scratchpad_desc();
      e->bias_arg = k[17] ? DNNL_ARG_BIAS : 0;
      set_operand(e->ops[0], DNNL_ARG_SRC, src_user, fwd.src_desc(), s.engine);
      set_operand(e->ops[1], DNNL_ARG_WEIGHTS, wei_user, fwd.weights_desc(), s.engine);
      set_operand(e->ops[2], DNNL_ARG_DST, dst_user, fwd.dst_desc(), s.engine);
    } else if (k[0] == kBackwardData) {  // (dy, w) -> dx
      auto pd = dnnl::convolution_backward_data::primitive_desc(
          s.engine, dnnl::algorithm::convolution_direct, src, wei, dst, strides, pad_l, pad_r,
          fwd, attr);
      if (blocked && is_gemm(pd)) continue;
      e->prim = dnnl::convolution_backward_data(pd);
      e->scratch = pd.scratchpad_desc();
      set_operand(e->ops[0], DNNL_ARG_DIFF_DST, dst_user, pd.diff_dst_desc(), s.engine);
      set_operand(e->ops[1], DNNL_ARG_WEIGHTS, wei_user, pd.weights_desc(), s.engine);
      set_operand(e->ops[2], DNNL_ARG_DIFF_SRC, src_user, pd.diff_src_desc(), s.engine);
    } else {  // (x, dy) -> dw[, db]
      auto pd = dnnl::convolution_backward_weights::primitive_desc(
          s.engine, dnnl::algorithm::convolution_direct, src, wei, bias, dst, strides, pad_l,
          pad_r, fwd, attr);
      if (blocked && is_gemm(pd)) continue;
      e->prim = dnnl::convolution_backward_weights(pd);
      e->scratch = pd.scratchpad_desc();
      e->bias_arg = k[17] ? DNNL_ARG_DIFF_BIAS : 0;
      set_operand(e->ops[0], DNNL_ARG_SRC, src_user, pd.src_desc(), s.engine);
      set_operand(e->ops[1], DNNL_ARG_DIFF_DST, dst_user, pd.diff_dst_desc(), s.engine);
      set_operand(e->ops[2], DNNL_ARG_DIFF_WEIGHTS, wei_user, pd.diff_weights_desc(), s.engine);
    }
    break;
  }
  e->bias = bias;
  Entry& ref = *e;
  s.cache.emplace(k, std::move(e));
  return ref;
}

// Runs the primitive of `key` on the handler's buffers: operand 0, operand 1, result, and the bias
// (an input of the forward, a result of the weight gradient; nullptr without). Caller holds the
// mutex.
void execute(const Key& key, void* const data[4]) {
  State& s = state();
  if (s.threads > 0) omp_set_num_threads(s.threads);  // per calling thread in OpenMP
  Entry& e = lookup(key);
  std::unordered_map<int, memory> args;
  for (int i = 0; i < 3; ++i) {
    Operand& o = e.ops[i];
    memory user(o.user, s.engine, data[i]);
    if (o.reorder && i < 2 && o.layout != mlc_conv::kOther)
      mlc_conv::copy_kernel(o.layout, o.block, o.user.get_dims(), static_cast<const float*>(data[i]),
                            static_cast<float*>(o.buf->get_data_handle()), true);
    else if (o.reorder && i < 2)
      o.to_prim.execute(s.stream, user, *o.buf);
    args.emplace(o.arg, o.reorder ? *o.buf : user);
  }
  if (e.bias_arg) args.emplace(e.bias_arg, memory(e.bias, s.engine, data[3]));
  if (size_t size = e.scratch.get_size()) {
    if (size > s.scratch_size) {  // grown once per larger primitive, then kept
      s.scratch = std::make_unique<memory>(
          memory::desc({static_cast<memory::dim>(size)}, memory::data_type::u8, Tag::a), s.engine);
      s.scratch_size = size;
    }
    args.emplace(DNNL_ARG_SCRATCHPAD, memory(e.scratch, s.engine, s.scratch->get_data_handle()));
  }
  e.prim.execute(s.stream, args);
  Operand& r = e.ops[2];
  if (r.reorder && r.layout != mlc_conv::kOther) {
    s.stream.wait();
    mlc_conv::copy_kernel(r.layout, r.block, r.user.get_dims(),
                          static_cast<const float*>(r.buf->get_data_handle()),
                          static_cast<float*>(data[2]), false);
  } else if (r.reorder) {
    memory user(r.user, s.engine, data[2]);
    r.to_user.execute(s.stream, *r.buf, user);
  }
  s.stream.wait();
}

ffi::Error check(const ffi::AnyBuffer& b, ffi::DataType t, size_t rank, const char* what) {
  if (b.dimensions().size() != rank)
    return ffi::Error::InvalidArgument(std::string("onednn conv: ") + what + " has the wrong rank");
  if (b.element_type() != t)
    return ffi::Error::InvalidArgument(std::string("onednn conv: ") + what +
                                       ": every operand must have one dtype");
  return ffi::Error::Success();
}

// One convolution of `kind` on x: N H W C (input side), w: KH KW C O, y: N OH OW O and the
// optional bias (O): checked, keyed and run. The roles: forward (x, w[, b]) -> y; data (y, w) -> x;
// weights (x, y) -> w[, b]. Caller holds the mutex.
ffi::Error conv(Kind kind, const ffi::AnyBuffer& x, const ffi::AnyBuffer& w,
                const ffi::AnyBuffer& y, const ffi::AnyBuffer* bias, bool relu,
                const Geometry& g) {
  ffi::DataType t = x.element_type();
  if (t != ffi::DataType::F32 && t != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument("onednn conv: float32 or bfloat16 only");
  for (auto [buf, name] : {std::pair<const ffi::AnyBuffer*, const char*>{&x, "input"},
                           {&w, "kernel"}, {&y, "output"}}) {
    ffi::Error e = check(*buf, t, 4, name);
    if (e.failure()) return e;
  }
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y.dimensions();
  if (wd[2] != xd[3] || wd[3] != yd[3] || xd[0] != yd[0])
    return ffi::Error::InvalidArgument("onednn conv: operand shapes do not match");
  if (bias) {
    ffi::Error e = check(*bias, t, 1, "bias");
    if (e.failure()) return e;
    if (bias->dimensions()[0] != wd[3])
      return ffi::Error::InvalidArgument("onednn conv: the bias does not match the kernel");
  }
  const Key key = {kind, t == ffi::DataType::BF16 ? 1 : 0, xd[0], xd[1], xd[2], xd[3], wd[3],
                   wd[0], wd[1], yd[1], yd[2], g.sh, g.sw, g.pt, g.pb, g.pl, g.pr,
                   bias != nullptr, relu};
  const ffi::AnyBuffer* order[3][3] = {{&x, &w, &y}, {&y, &w, &x}, {&x, &y, &w}};
  void* const data[4] = {order[kind][0]->untyped_data(), order[kind][1]->untyped_data(),
                         order[kind][2]->untyped_data(), bias ? bias->untyped_data() : nullptr};
  try {
    execute(key, data);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

#define MLC_GEOMETRY int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr
// Each handler: one call at a time (the mutex), its geometry as `g`.
#define MLC_LOCKED                                \
  std::lock_guard<std::mutex> lock(state().mu);   \
  const Geometry g{sh, sw, pt, pb, pl, pr}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   MLC_GEOMETRY) {
  MLC_LOCKED;
  return conv(kForward, x, w, *y, nullptr, false, g);
}

// The forward with the bias added and, when relu != 0, a ReLU after it, in the primitive.
ffi::Error BiasForward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b,
                       ffi::Result<ffi::AnyBuffer> y, MLC_GEOMETRY, int64_t relu) {
  MLC_LOCKED;
  return conv(kForward, x, w, *y, &b, relu != 0, g);
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                        MLC_GEOMETRY) {
  MLC_LOCKED;
  return conv(kBackwardData, *dx, w, dy, nullptr, false, g);
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                           MLC_GEOMETRY) {
  MLC_LOCKED;
  return conv(kBackwardWeights, x, *dw, dy, nullptr, false, g);
}

// The weight gradient with the bias gradient (the sum of dy over N, H, W) from the same primitive.
ffi::Error BackwardWeightsBias(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                               ffi::Result<ffi::AnyBuffer> db, MLC_GEOMETRY) {
  MLC_LOCKED;
  return conv(kBackwardWeights, x, *dw, dy, &*db, false, g);
}

bool same(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b) {
  auto ad = a.dimensions(), bd = b.dimensions();
  return a.element_type() == b.element_type() && ad.size() == bd.size() &&
         std::equal(ad.begin(), ad.end(), bd.begin());
}

// Both gradients in one call: (x, dy, w) -> (dx, dw[, db]). One call rather than two lets XLA see
// that every read of the kernel happens before its in-place update (the weight gradient it waits
// for comes from the same call), so it does not copy the trainable kernels at the start of each
// step.
ffi::Error both(const ffi::AnyBuffer& x, const ffi::AnyBuffer& dy, const ffi::AnyBuffer& w,
                const ffi::AnyBuffer& dx, const ffi::AnyBuffer& dw, const ffi::AnyBuffer* db,
                const Geometry& g) {
  if (!same(x, dx) || !same(w, dw))
    return ffi::Error::InvalidArgument("onednn conv: operand shapes do not match");
  ffi::Error err = conv(kBackwardData, dx, w, dy, nullptr, false, g);
  return err.failure() ? err : conv(kBackwardWeights, x, dw, dy, db, false, g);
}

ffi::Error Backward(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::AnyBuffer w,
                    ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dw, MLC_GEOMETRY) {
  MLC_LOCKED;
  return both(x, dy, w, *dx, *dw, nullptr, g);
}

ffi::Error BackwardBias(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::AnyBuffer w,
                        ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dw,
                        ffi::Result<ffi::AnyBuffer> db, MLC_GEOMETRY) {
  MLC_LOCKED;
  return both(x, dy, w, *dx, *dw, &*db, g);
}

}  // namespace

#define MLC_ATTRS                                                                   \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")    \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")
#define MLC_ARG .Arg<ffi::AnyBuffer>()
#define MLC_RET .Ret<ffi::AnyBuffer>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(MlcConvForward, Forward, ffi::Ffi::Bind() MLC_ARG MLC_ARG MLC_RET MLC_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MlcConvBiasForward, BiasForward,
                              ffi::Ffi::Bind() MLC_ARG MLC_ARG MLC_ARG MLC_RET MLC_ATTRS
                                  .Attr<int64_t>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(MlcConvBackwardData, BackwardData,
                              ffi::Ffi::Bind() MLC_ARG MLC_ARG MLC_RET MLC_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MlcConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind() MLC_ARG MLC_ARG MLC_RET MLC_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MlcConvBackwardWeightsBias, BackwardWeightsBias,
                              ffi::Ffi::Bind() MLC_ARG MLC_ARG MLC_RET MLC_RET MLC_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MlcConvBackward, Backward,
                              ffi::Ffi::Bind() MLC_ARG MLC_ARG MLC_ARG MLC_RET MLC_RET MLC_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MlcConvBackwardBias, BackwardBias,
                              ffi::Ffi::Bind() MLC_ARG MLC_ARG MLC_ARG MLC_RET MLC_RET MLC_RET
                                  MLC_ATTRS);

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
