// Shared pieces of csrc/cuda/residual_aggregate.cu: packed accesses of the widest width every pointer
// allows, the grid-stride loop, the deterministic block reduction, and the host-side choices of
// vector width, branch count and grid. Included by that one file only (hence the unnamed namespace).
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <vector>

namespace plasticnet {
namespace {

constexpr int kBranchesPerLaunch = 8;
constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kVectorBytes = 16;

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

template <typename T>
struct PointerTable {
  T* ptr[kBranchesPerLaunch];
};

// The unsigned word of one access of kBytes: loads and stores of a pack are one instruction each.
template <int kBytes>
struct Word;
// Eight fp32 accumulators of the running sum between groups for 16-bit inputs (its buffer is a fresh
// allocation, aligned far beyond 32 bytes): two 16-byte accesses.
struct alignas(32) Words32 {
  uint4 lo, hi;
};
template <>
struct Word<32> {
  using type = Words32;
};
template <>
struct Word<16> {
  using type = uint4;
};
template <>
struct Word<8> {
  using type = uint2;
};
template <>
struct Word<4> {
  using type = unsigned int;
};
template <>
struct Word<2> {
  using type = unsigned short;
};

template <int kVec, typename acc_t, typename T>
__device__ __forceinline__ void convert_pack(const Pack<T, kVec>& loaded, acc_t (&dst)[kVec]) {
#pragma unroll
  for (int j = 0; j < kVec; ++j) dst[j] = static_cast<acc_t>(loaded.v[j]);
}

// Pack number `pack` of `base` (element pack*kVec onwards), converted to the accumulation dtype.
// Loads and stores are coherent (not ld.global.nc) and the written pointers carry no __restrict__:
// the compiler then may not move a load past a store that could alias it, so each iteration's loads,
// written before its stores, are issued before them. (With the branches read through __ldg and
// grad_x __restrict__, ptxas sank two of three branch loads below the iteration's first stores.)
template <int kVec, typename acc_t, typename T>
__device__ __forceinline__ void load_pack(const T* base, int64_t pack, acc_t (&dst)[kVec]) {
  using W = typename Word<static_cast<int>(sizeof(T)) * kVec>::type;
  const W word = reinterpret_cast<const W*>(base)[pack];
  Pack<T, kVec> loaded;
  memcpy(&loaded, &word, sizeof(loaded));
  convert_pack<kVec>(loaded, dst);
}

template <int kVec, typename T, typename acc_t>
__device__ __forceinline__ void store_pack(T* base, int64_t pack, const acc_t (&src)[kVec]) {
  using W = typename Word<static_cast<int>(sizeof(T)) * kVec>::type;
  Pack<T, kVec> stored;
#pragma unroll
  for (int j = 0; j < kVec; ++j) stored.v[j] = static_cast<T>(src[j]);
  W word;
  memcpy(&word, &stored, sizeof(word));
  reinterpret_cast<W*>(base)[pack] = word;
}

// Array extent for kBranches values: at least 1, so K = 0 needs no zero-length arrays.
template <int kBranches>
constexpr int slots() {
  return kBranches > 0 ? kBranches : 1;
}

// gates and mask (in the accumulation dtype, any stride) as the kernels read them: each launch forms
// s_k = gates_k * mask_k itself, so no scales tensor is made per call.
template <typename acc_t>
struct Scales {
  const acc_t* gates;
  int64_t gate_stride;
  const acc_t* mask;
  int64_t mask_stride;

  // The scales of branches first, first + 1, ...: those of one group.
  Scales from(int64_t first) const {
    return {gates + first * gate_stride, gate_stride, mask + first * mask_stride, mask_stride};
  }
};

template <typename acc_t>
Scales<acc_t> scales_of(const at::Tensor& gates, const at::Tensor& mask) {
  return {gates.const_data_ptr<acc_t>(), gates.stride(0), mask.const_data_ptr<acc_t>(), mask.stride(0)};
}

template <int kBranches, typename acc_t>
__device__ __forceinline__ void load_scales(const Scales<acc_t>& s, acc_t (&dst)[slots<kBranches>()]) {
#pragma unroll
  for (int k = 0; k < kBranches; ++k) dst[k] = __ldg(s.gates + k * s.gate_stride) * __ldg(s.mask + k * s.mask_stride);
}

// Runs body(pack) over all full packs of kVec elements, then body's scalar twin over the tail,
// in a grid-stride loop. Both loops assign work by (blockIdx, threadIdx) only, so a fixed grid
// size gives a fixed summation order.
template <int kVec, typename VecBody, typename ScalarBody>
__device__ __forceinline__ void grid_stride(int64_t n, const VecBody& vec_body, const ScalarBody& scalar_body) {
  const int64_t num_packs = n / kVec;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t p = first; p < num_packs; p += stride) vec_body(p);
  // Fewer than kVec tail elements; no iteration at all when kVec == 1.
  for (int64_t i = num_packs * kVec + first; i < n; i += stride) scalar_body(i);
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Block-wide sums of values[m] for m < count (count is uniform over the block); thread 0 writes sum
// m to dst[m * dst_stride]. A fixed shuffle tree and a fixed shared-memory order: bitwise
// reproducible. Every thread of the block must call it.
template <int M, typename acc_t>
__device__ __forceinline__ void block_sum_store(const acc_t (&values)[M], int count, acc_t* dst, int64_t dst_stride) {
  __shared__ acc_t warp_sums[M][kWarps];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    if (m < count) {
      const acc_t v = warp_sum(values[m]);
      if (lane == 0) warp_sums[m][warp] = v;
    }
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (m < count) {
        const acc_t v = warp_sum(lane < kWarps ? warp_sums[m][lane] : acc_t(0));
        if (lane == 0) dst[m * dst_stride] = v;
      }
    }
  }
}

// ---- host side ----

// Enough blocks to cover `work_items` threads, capped at what the device keeps resident at once
// (the grid-stride loops cover the rest). Depends only on the device and the kernel, so the
// backward's summation order, and hence its bits, is reproducible. The capacity takes two host queries
// of microseconds each, a small join's whole budget: asked once per (kernel, device) and kept.
template <auto kKernel>
int grid_size(int64_t work_items) {
  constexpr int kDevices = 64;
  static std::array<std::atomic<int64_t>, kDevices> capacity{};  // 0 until asked
  const int device = c10::cuda::current_device();
  int64_t resident = device < kDevices ? capacity[device].load(std::memory_order_relaxed) : 0;
  if (resident == 0) {
    int sms = 0;
    int blocks_per_sm = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kKernel, kThreads, 0));
    resident = static_cast<int64_t>(sms) * std::max(blocks_per_sm, 1);
    if (device < kDevices) capacity[device].store(resident, std::memory_order_relaxed);
  }
  const int64_t needed = (work_items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min(needed, resident)));
}

// The widest access, in bytes (16, 8, 4 or 2; an element at least), that every tensor's data
// pointer is aligned to: one view misaligned by 8 bytes costs the others only half their width.
template <typename scalar_t>
int common_alignment(std::initializer_list<const std::vector<at::Tensor>*> groups) {
  std::uintptr_t bits = kVectorBytes;
  for (const auto* tensors : groups) {
    for (const auto& t : *tensors) bits |= reinterpret_cast<std::uintptr_t>(t.const_data_ptr<scalar_t>());
  }
  return static_cast<int>(bits & (~bits + 1));  // the lowest set bit
}

// f(std::integral_constant<int, kVec>) for the widest pack of scalar_t that `bytes` allows.
template <typename scalar_t, int kBytes = kVectorBytes, typename F>
void with_vector_width(int bytes, const F& f) {
  constexpr int kVec = kBytes / static_cast<int>(sizeof(scalar_t));
  if constexpr (kVec <= 1) {
    f(std::integral_constant<int, 1>{});
  } else if (bytes >= kBytes) {
    f(std::integral_constant<int, kVec>{});
  } else {
    with_vector_width<scalar_t, kBytes / 2>(bytes, f);
  }
}

// f(std::integral_constant<int, K>) for a branch count 0 <= count <= kBranchesPerLaunch.
template <int K = 0, typename F>
void with_branch_count(int count, const F& f) {
  if constexpr (K > kBranchesPerLaunch) {
    TORCH_CHECK(false, "residual_aggregate: ", count, " branches in one launch; at most ", kBranchesPerLaunch);
  } else if (count == K) {
    f(std::integral_constant<int, K>{});
  } else {
    with_branch_count<K + 1>(count, f);
  }
}

// Pointers to tensors[first, first + count) (count <= kBranchesPerLaunch), unused entries null.
template <typename T>
PointerTable<T> pointer_table(const std::vector<at::Tensor>& tensors, int64_t first, int count) {
  PointerTable<T> table{};
  for (int k = 0; k < count; ++k) {
    if constexpr (std::is_const_v<T>) {
      table.ptr[k] = tensors[first + k].const_data_ptr<std::remove_const_t<T>>();
    } else {
      table.ptr[k] = tensors[first + k].mutable_data_ptr<T>();
    }
  }
  return table;
}

// Branch counts of the launches that cover K branches: at least one launch, even for K == 0.
std::vector<int> branch_groups(int64_t K) {
  std::vector<int> counts;
  for (int64_t first = 0; first == 0 || first < K; first += kBranchesPerLaunch) {
    counts.push_back(static_cast<int>(std::min<int64_t>(K - first, kBranchesPerLaunch)));
  }
  return counts;
}

}  // namespace
}  // namespace plasticnet
