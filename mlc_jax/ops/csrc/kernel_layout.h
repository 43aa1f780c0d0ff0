// Kernel layouts oneDNN 3.2's f32 convolutions ask for, which `copy_kernel` reorders from and to
// JAX's HWIO itself (oneDNN's generic jit:uni reorder took 1.5-2.5 ms a 3x3x512x512 kernel in a
// step, 2-3x the plain copies below; 7% of VGG16's top-block step at 112 px). For onednn_conv.cc.
#ifndef MLC_JAX_OPS_CSRC_KERNEL_LAYOUT_H_
#define MLC_JAX_OPS_CSRC_KERNEL_LAYOUT_H_

#include <cstdint>
#include <cstring>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"

namespace mlc_conv {

enum KernelLayout {
  kOther = 0,   // any other: oneDNN's reorder
  kOBlocked,    // Acdb{B}a: [O/B][H][W][I][B] (forward)
  kIBlocked,    // Bcda{B}b: [I/B][H][W][O][B] (input gradient)
  kOIBlocked,   // ABcd{B}b{B}a: [O/B][I/B][H][W][B i][B o] (weight gradient)
};

// Which of the layouts `prim` is, with its block (kOther for anything but an f32 HWIO `user`
// whose blocked dims divide evenly).
inline std::pair<KernelLayout, int> find_kernel_layout(const dnnl::memory::desc& user,
                                                       const dnnl::memory::desc& prim) {
  using dnnl::memory;
  using Tag = memory::format_tag;
  const auto dt = memory::data_type::f32;
  memory::dims d = user.get_dims();  // O I KH KW
  if (user.get_data_type() != dt || user != memory::desc(d, dt, Tag::hwio)) return {kOther, 0};
  const std::pair<int, Tag> o_blocks[] = {{16, Tag::Acdb16a}, {32, Tag::Acdb32a}, {64, Tag::Acdb64a}};
  const std::pair<int, Tag> i_blocks[] = {{16, Tag::Bcda16b}, {32, Tag::Bcda32b}, {64, Tag::Bcda64b}};
  for (auto [b, tag] : o_blocks)
    if (d[0] % b == 0 && prim == memory::desc(d, dt, tag)) return {kOBlocked, b};
  for (auto [b, tag] : i_blocks)
    if (d[1] % b == 0 && prim == memory::desc(d, dt, tag)) return {kIBlocked, b};
  if (d[0] % 16 == 0 && d[1] % 16 == 0 && prim == memory::desc(d, dt, Tag::ABcd16b16a))
    return {kOIBlocked, 16};
  return {kOther, 0};
}

// copy_kernel for one block size B (a compile-time constant, so each B-float copy is a few vector
// moves rather than a call to memcpy). Each loop walks the plain HWIO array in order, row by row
// (one row: the O outputs of one (h, w, i)), and splits the rows over the OpenMP threads.
template <int B>
void copy_kernel_b(KernelLayout layout, int64_t O, int64_t I, int64_t HW, const float* from,
                   float* to, bool to_prim) {
  constexpr size_t kBytes = B * sizeof(float);
  const int64_t rows = HW * I;
  if (layout == kOBlocked) {  // HWIO[hw][i][o] <-> [o/B][hw][i][B]
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t ob = 0; ob < O / B; ++ob) {
        const int64_t blocked = (ob * rows + r) * B, plain = r * O + ob * B;
        to_prim ? std::memcpy(to + blocked, from + plain, kBytes)
                : std::memcpy(to + plain, from + blocked, kBytes);
      }
  } else if (layout == kIBlocked) {  // HWIO[hw][i][o] <-> [i/B][hw][o][B]
    // Per (i block, hw): a B x O tile of rows transposed to O x B, 8 outputs at a time through
    // a small buffer (the element-wise loop it replaced ran at half the memory's speed).
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t ib = 0; ib < I / B; ++ib)
      for (int64_t hw = 0; hw < HW; ++hw) {
        const int64_t plain = (hw * I + ib * B) * O, blocked = (ib * HW + hw) * O * B;
        for (int64_t o0 = 0; o0 < O; o0 += 8) {
          const int64_t n = O - o0 < 8 ? O - o0 : 8;
          float tile[8][B];
          if (to_prim) {
            for (int bi = 0; bi < B; ++bi)
              for (int64_t k = 0; k < n; ++k) tile[k][bi] = from[plain + bi * O + o0 + k];
            std::memcpy(to + blocked + o0 * B, tile, n * kBytes);
          } else {
            std::memcpy(tile, from + blocked + o0 * B, n * kBytes);
            for (int bi = 0; bi < B; ++bi)
              for (int64_t k = 0; k < n; ++k) to[plain + bi * O + o0 + k] = tile[k][bi];
          }
        }
      }
  } else if (layout == kOIBlocked) {  // HWIO[hw][i][o] <-> [o/B][i/B][hw][B i][B o]
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t hw = r / I, i = r % I;
      for (int64_t ob = 0; ob < O / B; ++ob) {
        const int64_t blocked = (((ob * (I / B) + i / B) * HW + hw) * B + i % B) * B;
        const int64_t plain = r * O + ob * B;
        to_prim ? std::memcpy(to + blocked, from + plain, kBytes)
                : std::memcpy(to + plain, from + blocked, kBytes);
      }
    }
  }
}

// HWIO <-> a blocked kernel layout of block B (to_prim: HWIO -> blocked; else blocked -> HWIO);
// dims O I KH KW. Near the speed of a memcpy of the kernel (a 3x3x512x512 kernel: 0.7-1.1 ms,
// against 0.7 ms for memcpy, with the caches cold, on 2 Zen 4 cores).
inline void copy_kernel(KernelLayout layout, int64_t B, const dnnl::memory::dims& d,
                        const float* from, float* to, bool to_prim) {
  const int64_t O = d[0], I = d[1], HW = d[2] * d[3];
  switch (B) {  // the blocks find_kernel_layout answers with
    case 16: return copy_kernel_b<16>(layout, O, I, HW, from, to, to_prim);
    case 32: return copy_kernel_b<32>(layout, O, I, HW, from, to, to_prim);
    case 64: return copy_kernel_b<64>(layout, O, I, HW, from, to, to_prim);
  }
}

}  // namespace mlc_conv

#endif  // MLC_JAX_OPS_CSRC_KERNEL_LAYOUT_H_
