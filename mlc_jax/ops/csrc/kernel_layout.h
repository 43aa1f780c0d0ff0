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

// HWIO <-> a blocked kernel layout of block B (to_prim: HWIO -> blocked; else blocked -> HWIO);
// dims O I KH KW. Plain strided copies of B floats at a time, split over the OpenMP threads.
inline void copy_kernel(KernelLayout layout, int64_t B, const dnnl::memory::dims& d,
                        const float* from, float* to, bool to_prim) {
  const int64_t O = d[0], I = d[1], HW = d[2] * d[3];
  const size_t bytes = B * sizeof(float);
  if (layout == kOBlocked) {  // HWIO[hw][i][o] <-> [o/B][hw][i][B]
    const int64_t rows = HW * I;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t ob = 0; ob < O / B; ++ob)
      for (int64_t r = 0; r < rows; ++r) {
        float* blocked = (to_prim ? to : const_cast<float*>(from)) + (ob * rows + r) * B;
        float* plain = (to_prim ? const_cast<float*>(from) : to) + r * O + ob * B;
        to_prim ? std::memcpy(blocked, plain, bytes) : std::memcpy(plain, blocked, bytes);
      }
  } else if (layout == kIBlocked) {  // HWIO[hw][i][o] <-> [i/B][hw][o][B]
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
  } else if (layout == kOIBlocked) {  // HWIO[hw][i][o] <-> [o/B][i/B][hw][B i][B o]
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

}  // namespace mlc_conv

#endif  // MLC_JAX_OPS_CSRC_KERNEL_LAYOUT_H_
