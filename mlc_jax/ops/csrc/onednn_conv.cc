// 2-D convolutions on the CPU through oneDNN, as XLA FFI handlers (jax.ffi), for mlc_jax/ops/conv.py.
//
// Three handlers, each one oneDNN primitive: forward (x, w -> y), input gradient (dy, w -> dx) and
// weight gradient (x, dy -> dw). Layouts are JAX's: activations NHWC, kernels HWIO; float32 or
// bfloat16 (all operands the same type). Strides and explicit paddings come as attributes, the
// paddings already computed in Python the way lax computes them. Kernels are reordered into the
// layout the primitive picked (format `any`); activations are passed in NHWC as they are, except
// for the kinds MLC_JAX_ONEDNN_BLOCKED names (default: the weight gradient), whose activations are
// reordered into oneDNN's blocked layout (buffers kept with the cached primitive).
// Primitives are cached by shape; one mutex serialises calls (each uses every thread it is given:
// mlc_conv_set_threads) so that two convolutions XLA runs side by side do not oversubscribe cores.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;

namespace {

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// kind, dtype, N H W C, O KH KW, OH OW, sh sw, pt pb pl pr
using Key = std::array<int64_t, 17>;

// Kernel layouts oneDNN 3.2's f32 convolutions ask for, which `copy_kernel` reorders from and to
// JAX's HWIO itself (oneDNN's generic jit:uni reorder took 1.5-2.5 ms a 3x3x512x512 kernel in a
// step, 2-3x the plain copies below; 7% of VGG16's top-block step at 112 px).
enum KernelLayout {
  kOther = 0,   // any other: oneDNN's reorder
  kOBlocked,    // Acdb{B}a: [O/B][H][W][I][B] (forward)
  kIBlocked,    // Bcda{B}b: [I/B][H][W][O][B] (input gradient)
  kOIBlocked,   // ABcd{B}b{B}a: [O/B][I/B][H][W][B i][B o] (weight gradient)
};

// One operand of a primitive: the layout JAX holds (NHWC or HWIO), the primitive's own, and when
// they differ a buffer in the primitive's layout (kept with the primitive), filled or read by
// `copy_kernel` for the kernel layouts above, by oneDNN's reorders otherwise.
struct Operand {
  int arg = 0;  // DNNL_ARG_*
  memory::desc user, prim;
  bool reorder = false;
  KernelLayout layout = kOther;
  int block = 0;
  dnnl::reorder to_prim, to_user;  // layout kOther only
  std::unique_ptr<memory> buf;
};

struct Entry {
  dnnl::primitive prim;
  Operand ops[3];  // the handler's operand 0, operand 1 and result, in that order
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
    // Bits: 1 forward, 2 input gradient, 4 weight gradient. Default 4: oneDNN 3.2's weight
    // gradient (jit:avx512_core) ran 10-25% faster on its blocked layout, reorders included, while
    // forward and input gradient (brgconv, which takes NHWC as is) lost as much with reorders.
    const char* v = std::getenv("MLC_JAX_ONEDNN_BLOCKED");
    st->blocked = v && *v ? std::atoi(v) : 4;
    return st;
  }();
  return *s;
}

// Which of the kernel layouts `prim` is (for an f32 HWIO `user` whose blocked dims divide evenly).
void find_kernel_layout(Operand& o) {
  if (o.user.get_data_type() != memory::data_type::f32 ||
      o.user != memory::desc(o.user.get_dims(), memory::data_type::f32, Tag::hwio))
    return;
  memory::dims d = o.user.get_dims();  // O I KH KW
  auto dt = memory::data_type::f32;
  const std::pair<int, Tag> o_blocks[] = {{16, Tag::Acdb16a}, {32, Tag::Acdb32a}, {64, Tag::Acdb64a}};
  const std::pair<int, Tag> i_blocks[] = {{16, Tag::Bcda16b}, {32, Tag::Bcda32b}, {64, Tag::Bcda64b}};
  for (auto [b, tag] : o_blocks)
    if (d[0] % b == 0 && o.prim == memory::desc(d, dt, tag)) o.layout = kOBlocked, o.block = b;
  for (auto [b, tag] : i_blocks)
    if (d[1] % b == 0 && o.prim == memory::desc(d, dt, tag)) o.layout = kIBlocked, o.block = b;
  if (d[0] % 16 == 0 && d[1] % 16 == 0 && o.prim == memory::desc(d, dt, Tag::ABcd16b16a))
    o.layout = kOIBlocked, o.block = 16;
}

// HWIO <-> the operand's blocked kernel layout (to_prim: HWIO -> blocked; else blocked -> HWIO).
// Plain strided copies of B floats at a time, split over the convolution's threads.
void copy_kernel(const Operand& o, const float* from, float* to, bool to_prim) {
  const memory::dims d = o.user.get_dims();  // O I KH KW
  const int64_t O = d[0], I = d[1], HW = d[2] * d[3], B = o.block;
  const size_t bytes = B * sizeof(float);
  if (o.layout == kOBlocked) {  // HWIO[hw][i][o] <-> [o/B][hw][i][B]
    const int64_t rows = HW * I;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t ob = 0; ob < O / B; ++ob)
      for (int64_t r = 0; r < rows; ++r) {
        float* blocked = (to_prim ? to : const_cast<float*>(from)) + (ob * rows + r) * B;
        float* plain = (to_prim ? const_cast<float*>(from) : to) + r * O + ob * B;
        to_prim ? std::memcpy(blocked, plain, bytes) : std::memcpy(plain, blocked, bytes);
      }
  } else if (o.layout == kIBlocked) {  // HWIO[hw][i][o] <-> [i/B][hw][o][B]
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t ib = 0; ib < I / B; ++ib)
      for (int64_t hw = 0; hw < HW; ++hw)
        for (int64_t bi = 0; bi < B; ++bi) {
          const int64_t plain_row = (hw * I + ib * B + bi) * O, blocked_row = (ib * HW + hw) * O * B;
          if (to_prim) {
            for (int64_t oo = 0; oo < O; ++oo) to[blocked_row + oo * B + bi] = from[plain_row + oo];
          } else {
            for (int64_t oo = 0; oo < O; ++oo) to[plain_row + oo] = from[blocked_row + oo * B + bi];
          }
        }
  } else {  // kOIBlocked: HWIO[hw][i][o] <-> [o/B][i/B][hw][B i][B o]
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t ob = 0; ob < O / B; ++ob)
      for (int64_t ib = 0; ib < I / B; ++ib)
        for (int64_t hw = 0; hw < HW; ++hw)
          for (int64_t bi = 0; bi < B; ++bi) {
            const int64_t blocked = (((ob * (I / B) + ib) * HW + hw) * B + bi) * B;
            const int64_t plain = (hw * I + ib * B + bi) * O + ob * B;
            to_prim ? std::memcpy(to + blocked, from + plain, bytes)
                    : std::memcpy(to + plain, from + blocked, bytes);
          }
  }
}

void set_operand(Operand& o, int arg, const memory::desc& user, const memory::desc& prim,
                 const dnnl::engine& eng) {
  o.arg = arg, o.user = user, o.prim = prim, o.reorder = user != prim;
  if (!o.reorder) return;
  o.buf = std::make_unique<memory>(prim, eng);
  find_kernel_layout(o);
  if (o.layout == kOther) {
    o.to_prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, user, eng, prim));
    o.to_user = dnnl::reorder(dnnl::reorder::primitive_desc(eng, prim, eng, user));
  }
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
  auto e = std::make_unique<Entry>();
  // Blocked activations (format `any`) only for float32 and only where oneDNN answers with a
  // blocked direct kernel: for some bf16 shapes oneDNN 3.2 picks a plain-layout gemm weight
  // gradient whose im2col crashes; NHWC then, which every kind takes as is.
  bool blocked = (s.blocked >> k[0]) & 1 && dt == memory::data_type::f32;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  for (int attempt = 0; attempt < 2; ++attempt, blocked = false) {
    Tag act = blocked ? Tag::any : Tag::nhwc;
    memory::desc src(src_dims, dt, act), dst(dst_dims, dt, act);
    auto fwd = dnnl::convolution_forward::primitive_desc(
        s.engine, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
        wei, dst, strides, pad_l, pad_r, attr);
    if (k[0] == kForward) {  // (x, w) -> y
      if (blocked && std::string(fwd.impl_info_str()).find("gemm") != std::string::npos) continue;
      e->prim = dnnl::convolution_forward(fwd);
      e->scratch = fwd.scratchpad_desc();
      set_operand(e->ops[0], DNNL_ARG_SRC, src_user, fwd.src_desc(), s.engine);
      set_operand(e->ops[1], DNNL_ARG_WEIGHTS, wei_user, fwd.weights_desc(), s.engine);
      set_operand(e->ops[2], DNNL_ARG_DST, dst_user, fwd.dst_desc(), s.engine);
    } else if (k[0] == kBackwardData) {  // (dy, w) -> dx
      auto pd = dnnl::convolution_backward_data::primitive_desc(
          s.engine, dnnl::algorithm::convolution_direct, src, wei, dst, strides, pad_l, pad_r,
          fwd, attr);
      if (blocked && std::string(pd.impl_info_str()).find("gemm") != std::string::npos) continue;
      e->prim = dnnl::convolution_backward_data(pd);
      e->scratch = pd.scratchpad_desc();
      set_operand(e->ops[0], DNNL_ARG_DIFF_DST, dst_user, pd.diff_dst_desc(), s.engine);
      set_operand(e->ops[1], DNNL_ARG_WEIGHTS, wei_user, pd.weights_desc(), s.engine);
      set_operand(e->ops[2], DNNL_ARG_DIFF_SRC, src_user, pd.diff_src_desc(), s.engine);
    } else {  // (x, dy) -> dw
      auto pd = dnnl::convolution_backward_weights::primitive_desc(
          s.engine, dnnl::algorithm::convolution_direct, src, wei, dst, strides, pad_l, pad_r,
          fwd, attr);
      if (blocked && std::string(pd.impl_info_str()).find("gemm") != std::string::npos) continue;
      e->prim = dnnl::convolution_backward_weights(pd);
      e->scratch = pd.scratchpad_desc();
      set_operand(e->ops[0], DNNL_ARG_SRC, src_user, pd.src_desc(), s.engine);
      set_operand(e->ops[1], DNNL_ARG_DIFF_DST, dst_user, pd.diff_dst_desc(), s.engine);
      set_operand(e->ops[2], DNNL_ARG_DIFF_WEIGHTS, wei_user, pd.diff_weights_desc(), s.engine);
    }
    break;
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

// Runs the primitive of `key` on the handler's buffers (operand 0, operand 1, result). Caller holds
// the mutex.
void execute(const Key& key, void* data0, void* data1, void* result) {
  State& s = state();
  if (s.threads > 0) omp_set_num_threads(s.threads);  // per calling thread in OpenMP
  Entry& e = lookup(key);
  void* data[3] = {data0, data1, result};
  std::unordered_map<int, memory> args;
  for (int i = 0; i < 3; ++i) {
    Operand& o = e.ops[i];
    memory user(o.user, s.engine, data[i]);
    if (o.reorder && i < 2 && o.layout != kOther)
      copy_kernel(o, static_cast<const float*>(data[i]),
                  static_cast<float*>(o.buf->get_data_handle()), true);
    else if (o.reorder && i < 2)
      o.to_prim.execute(s.stream, user, *o.buf);
    args.emplace(o.arg, o.reorder ? *o.buf : user);
  }
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
  if (r.reorder && r.layout != kOther) {
    s.stream.wait();
    copy_kernel(r, static_cast<const float*>(r.buf->get_data_handle()),
                static_cast<float*>(data[2]), false);
  } else if (r.reorder) {
    memory user(r.user, s.engine, data[2]);
    r.to_user.execute(s.stream, *r.buf, user);
  }
  s.stream.wait();
}

// The key of one convolution: x: N H W C (input side), w: KH KW C O, y: N OH OW O.
ffi::Error make_key(Kind kind, const ffi::AnyBuffer& x, const ffi::AnyBuffer& w,
                    const ffi::AnyBuffer& y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                    int64_t pl, int64_t pr, Key* key) {
  ffi::DataType t = x.element_type();
  if (t != ffi::DataType::F32 && t != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument("onednn conv: float32 or bfloat16 only");
  for (auto [buf, name] : {std::pair<const ffi::AnyBuffer*, const char*>{&x, "input"},
                           {&w, "kernel"}, {&y, "output"}}) {
    ffi::Error e = check(*buf, t, name);
    if (e.failure()) return e;
  }
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y.dimensions();
  if (wd[2] != xd[3] || wd[3] != yd[3] || xd[0] != yd[0])
    return ffi::Error::InvalidArgument("onednn conv: operand shapes do not match");
  *key = {kind, t == ffi::DataType::BF16 ? 1 : 0, xd[0], xd[1], xd[2], xd[3], wd[3], wd[0],
          wd[1], yd[1], yd[2], sh, sw, pt, pb, pl, pr};
  return ffi::Error::Success();
}

// `a`, `b`, `out` are the handler's two operands and result, whose roles depend on the kind:
// forward (x, w) -> y; data (dy, w) -> dx; weights (x, dy) -> dw.
ffi::Error run(Kind kind, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
               int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  const ffi::AnyBuffer& x = kind == kBackwardData ? *out : a;
  const ffi::AnyBuffer& w = kind == kBackwardWeights ? *out : b;
  const ffi::AnyBuffer& y = kind == kForward ? *out : (kind == kBackwardData ? a : b);
  Key key;
  ffi::Error err = make_key(kind, x, w, y, sh, sw, pt, pb, pl, pr, &key);
  if (err.failure()) return err;  // make_key checked x, w, y (a, b, out): one dtype, rank 4
  std::lock_guard<std::mutex> lock(state().mu);
  try {
    execute(key, a.untyped_data(), b.untyped_data(), out->untyped_data());
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

// Both gradients in one call: (x, dy, w) -> (dx, dw). One call rather than two lets XLA see that
// every read of the kernel happens before its in-place update (the weight gradient it waits for
// comes from the same call), so it does not copy the trainable kernels at the start of each step.
ffi::Error Backward(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::AnyBuffer w,
                    ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dw, int64_t sh,
                    int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Key data_key, weights_key;
  ffi::Error err = make_key(kBackwardData, *dx, w, dy, sh, sw, pt, pb, pl, pr, &data_key);
  if (err.failure()) return err;
  err = make_key(kBackwardWeights, x, *dw, dy, sh, sw, pt, pb, pl, pr, &weights_key);
  if (err.failure()) return err;
  auto same = [](const ffi::AnyBuffer& a, const ffi::AnyBuffer& b) {
    auto ad = a.dimensions(), bd = b.dimensions();
    return a.element_type() == b.element_type() && ad.size() == bd.size() &&
           std::equal(ad.begin(), ad.end(), bd.begin());
  };
  if (!same(x, *dx) || !same(w, *dw))
    return ffi::Error::InvalidArgument("onednn conv: operand shapes do not match");
  std::lock_guard<std::mutex> lock(state().mu);
  try {
    execute(data_key, dy.untyped_data(), w.untyped_data(), dx->untyped_data());
    execute(weights_key, x.untyped_data(), dy.untyped_data(), dw->untyped_data());
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
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
XLA_FFI_DEFINE_HANDLER_SYMBOL(MlcConvBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_bottom")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("pad_right"));

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
