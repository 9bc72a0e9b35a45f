// CUDA kernels of plasticnet::residual_aggregate and its backward (contract: csrc/plasticnet.cpp).
//
// Every tensor is walked as one flat array in x's layout (csrc/layout.h), with grid-stride loops,
// 64-bit indices and 16-byte vector accesses when every pointer allows them. Branch pointers travel
// by value in a kernel-parameter table of kBranchesPerLaunch entries, so no stacked copy of the
// branches and no host-to-device pointer upload (which would break CUDA-graph capture) is needed.
// K beyond one table is processed in groups of launches:
//   forward:  the running sum between groups is kept in the accumulation dtype, so fp16/bf16 still
//             round once; it costs one extra read and write of N accumulators per extra group.
//   backward: each group re-reads grad_out (and out for relu): 2N more reads per extra group.
// For K <= kBranchesPerLaunch the traffic is the minimum: forward reads (K+1)N and writes N,
// backward reads (K+2)N and writes (K+1)N.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "layout.h"

namespace plasticnet {
namespace {

constexpr int kBranchesPerLaunch = 8;
constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kVectorBytes = 16;

// Elements of scalar_t per 16-byte access.
template <typename scalar_t>
constexpr int vector_width() {
  return kVectorBytes / static_cast<int>(sizeof(scalar_t));
}

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

template <typename T>
struct PointerTable {
  T* ptr[kBranchesPerLaunch];
};

// Pack number `pack` of `base` (element pack*kVec onwards), converted to the accumulation dtype.
template <int kVec, typename acc_t, typename T>
__device__ __forceinline__ void load_pack(const T* base, int64_t pack, acc_t (&dst)[kVec]) {
  const Pack<T, kVec> loaded = reinterpret_cast<const Pack<T, kVec>*>(base)[pack];
#pragma unroll
  for (int j = 0; j < kVec; ++j) dst[j] = static_cast<acc_t>(loaded.v[j]);
}

template <int kVec, typename T, typename acc_t>
__device__ __forceinline__ void store_pack(T* base, int64_t pack, const acc_t (&src)[kVec]) {
  Pack<T, kVec> stored;
#pragma unroll
  for (int j = 0; j < kVec; ++j) stored.v[j] = static_cast<T>(src[j]);
  reinterpret_cast<Pack<T, kVec>*>(base)[pack] = stored;
}

template <typename acc_t>
__device__ __forceinline__ void load_scales(const acc_t* scales, int num_branches, acc_t (&dst)[kBranchesPerLaunch]) {
#pragma unroll
  for (int k = 0; k < kBranchesPerLaunch; ++k) dst[k] = k < num_branches ? scales[k] : acc_t(0);
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

// ---- forward ----

// dst = act(base + sum_{k < num_branches} scale[k] * branches[k]) for one pack of kVec elements.
template <int kVec, typename scalar_t, typename base_t, typename dst_t, typename acc_t>
__device__ __forceinline__ void forward_pack(int64_t pack, const base_t* base,
                                             const PointerTable<const scalar_t>& branches,
                                             const acc_t (&scale)[kBranchesPerLaunch], int num_branches, bool relu,
                                             dst_t* dst) {
  acc_t z[kVec];
  load_pack<kVec>(base, pack, z);
#pragma unroll
  for (int k = 0; k < kBranchesPerLaunch; ++k) {
    if (k < num_branches) {
      acc_t h[kVec];
      load_pack<kVec>(branches.ptr[k], pack, h);
#pragma unroll
      for (int j = 0; j < kVec; ++j) z[j] += scale[k] * h[j];
    }
  }
  if (relu) {
    // `z < 0` rather than max(z, 0): NaN passes through, as in torch.relu.
#pragma unroll
    for (int j = 0; j < kVec; ++j) z[j] = z[j] < acc_t(0) ? acc_t(0) : z[j];
  }
  store_pack<kVec>(dst, pack, z);
}

// base and dst may be the same buffer (the running sum of a middle group), hence no __restrict__.
template <typename scalar_t, typename base_t, typename dst_t, int kVec>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const base_t* base, PointerTable<const scalar_t> branches, const at::opmath_type<scalar_t>* scales,
                   int num_branches, bool relu, dst_t* dst, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t scale[kBranchesPerLaunch];
  load_scales(scales, num_branches, scale);
  grid_stride<kVec>(
      n, [&](int64_t p) { forward_pack<kVec>(p, base, branches, scale, num_branches, relu, dst); },
      [&](int64_t i) { forward_pack<1>(i, base, branches, scale, num_branches, relu, dst); });
}

// ---- backward ----

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

// One pack of the backward: dz = out <= 0 ? 0 : grad_out (relu) or grad_out, grad_x = dz (when
// grad_x is given), grad_branches[k] = scale[k] * dz, contribution[k] += sum(dz * branches[k]).
template <int kVec, bool kRelu, typename scalar_t, typename acc_t>
__device__ __forceinline__ void backward_pack(int64_t pack, const scalar_t* grad_out, const scalar_t* out,
                                              const PointerTable<const scalar_t>& branches,
                                              const PointerTable<scalar_t>& grad_branches,
                                              const acc_t (&scale)[kBranchesPerLaunch], int num_branches,
                                              scalar_t* grad_x, acc_t (&contribution)[kBranchesPerLaunch]) {
  acc_t dz[kVec];
  load_pack<kVec>(grad_out, pack, dz);
  if constexpr (kRelu) {
    acc_t y[kVec];
    load_pack<kVec>(out, pack, y);
    // torch.relu's rule, so the gradient passes where out is NaN. A select, not a multiply by the 0/1
    // mask: a non-finite grad_out where relu is off gives 0, as in torch (inf * 0 would make NaN).
#pragma unroll
    for (int j = 0; j < kVec; ++j) dz[j] = y[j] <= acc_t(0) ? acc_t(0) : dz[j];
  }
  if (grad_x != nullptr) store_pack<kVec>(grad_x, pack, dz);
#pragma unroll
  for (int k = 0; k < kBranchesPerLaunch; ++k) {
    if (k < num_branches) {
      acc_t h[kVec];
      acc_t dh[kVec];
      load_pack<kVec>(branches.ptr[k], pack, h);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        dh[j] = scale[k] * dz[j];
        contribution[k] += dz[j] * h[j];
      }
      store_pack<kVec>(grad_branches.ptr[k], pack, dh);
    }
  }
}

// partials: row k (stride gridDim.x) receives this block's share of contribution k.
template <typename scalar_t, int kVec, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ out,
                    PointerTable<const scalar_t> branches, PointerTable<scalar_t> grad_branches,
                    const at::opmath_type<scalar_t>* __restrict__ scales, int num_branches,
                    scalar_t* __restrict__ grad_x, at::opmath_type<scalar_t>* __restrict__ partials, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t scale[kBranchesPerLaunch];
  load_scales(scales, num_branches, scale);
  acc_t contribution[kBranchesPerLaunch];
#pragma unroll
  for (int k = 0; k < kBranchesPerLaunch; ++k) contribution[k] = acc_t(0);
  grid_stride<kVec>(
      n,
      [&](int64_t p) {
        backward_pack<kVec, kRelu>(p, grad_out, out, branches, grad_branches, scale, num_branches, grad_x,
                                   contribution);
      },
      [&](int64_t i) {
        backward_pack<1, kRelu>(i, grad_out, out, branches, grad_branches, scale, num_branches, grad_x, contribution);
      });
  block_sum_store(contribution, num_branches, partials + blockIdx.x, gridDim.x);
}

// Second stage of the contributions: block k sums row k of partials in a fixed order.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const acc_t* __restrict__ partials, int64_t row_length, acc_t* __restrict__ contributions) {
  const acc_t* row = partials + static_cast<int64_t>(blockIdx.x) * row_length;
  acc_t sum[1] = {acc_t(0)};
  for (int64_t i = threadIdx.x; i < row_length; i += blockDim.x) sum[0] += row[i];
  block_sum_store(sum, 1, contributions + blockIdx.x, 1);
}

// ---- host side ----

// Enough blocks to cover `work_items` threads, capped at what the device keeps resident at once
// (the grid-stride loops cover the rest). Depends only on the device and the kernel, so the
// backward's summation order, and hence its bits, is reproducible.
template <typename Kernel>
int grid_size(Kernel kernel, int64_t work_items) {
  int sms = 0;
  int blocks_per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, kThreads, 0));
  const int64_t needed = (work_items + kThreads - 1) / kThreads;
  const int64_t resident = static_cast<int64_t>(sms) * std::max(blocks_per_sm, 1);
  return static_cast<int>(std::max<int64_t>(1, std::min(needed, resident)));
}

template <int kVec, typename T>
bool vector_aligned(const T* p) {
  return reinterpret_cast<std::uintptr_t>(p) % sizeof(Pack<T, kVec>) == 0;
}

template <int kVec, typename T>
bool all_vector_aligned(const PointerTable<T>& table, int count) {
  return std::all_of(table.ptr, table.ptr + count, [](const T* p) { return vector_aligned<kVec>(p); });
}

template <int kVec, typename scalar_t>
bool tensors_vector_aligned(const std::vector<at::Tensor>& tensors) {
  return std::all_of(tensors.begin(), tensors.end(),
                     [](const at::Tensor& t) { return vector_aligned<kVec>(t.const_data_ptr<scalar_t>()); });
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

template <typename scalar_t, typename base_t, typename dst_t>
void launch_forward_group(const base_t* base, const PointerTable<const scalar_t>& branches,
                          const at::opmath_type<scalar_t>* scales, int count, bool relu, dst_t* dst, int64_t n) {
  constexpr int kVec = vector_width<scalar_t>();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (vector_aligned<kVec>(base) && vector_aligned<kVec>(dst) && all_vector_aligned<kVec>(branches, count)) {
    const auto kernel = forward_kernel<scalar_t, base_t, dst_t, kVec>;
    kernel<<<grid_size(kernel, n / kVec), kThreads, 0, stream>>>(base, branches, scales, count, relu, dst, n);
  } else {
    const auto kernel = forward_kernel<scalar_t, base_t, dst_t, 1>;
    kernel<<<grid_size(kernel, n), kThreads, 0, stream>>>(base, branches, scales, count, relu, dst, n);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_forward(const at::Tensor& x, const std::vector<at::Tensor>& branches, const at::Tensor& scales,
                    bool relu, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = out.numel();
  const auto groups = branch_groups(static_cast<int64_t>(branches.size()));
  const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  const acc_t* scale_ptr = scales.const_data_ptr<acc_t>();
  if (groups.size() == 1) {
    launch_forward_group(x_ptr, pointer_table<const scalar_t>(branches, 0, groups[0]), scale_ptr, groups[0], relu,
                         out_ptr, n);
    return;
  }
  // Running sum between groups: out itself when it already has the accumulation dtype.
  const at::Tensor running =
      std::is_same_v<scalar_t, acc_t> ? out : at::empty({n}, out.options().dtype(accumulate_type(out)));
  acc_t* running_ptr = running.mutable_data_ptr<acc_t>();
  int64_t first = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto table = pointer_table<const scalar_t>(branches, first, groups[g]);
    const acc_t* group_scales = scale_ptr + first;
    if (g == 0) {
      launch_forward_group(x_ptr, table, group_scales, groups[g], false, running_ptr, n);
    } else if (g + 1 < groups.size()) {
      launch_forward_group(running_ptr, table, group_scales, groups[g], false, running_ptr, n);
    } else {
      launch_forward_group(running_ptr, table, group_scales, groups[g], relu, out_ptr, n);
    }
    first += groups[g];
  }
}

template <typename scalar_t, int kVec, bool kRelu>
void launch_backward_kernels(const at::Tensor& grad_out, const at::Tensor& out, const std::vector<at::Tensor>& branches,
                             const at::Tensor& scales, at::Tensor& grad_x, std::vector<at::Tensor>& grad_branches,
                             at::Tensor& contributions) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = out.numel();
  const int64_t K = static_cast<int64_t>(branches.size());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto kernel = backward_kernel<scalar_t, kVec, kRelu>;
  const int blocks = grid_size(kernel, n / kVec);
  const at::Tensor partials = at::empty({K, blocks}, contributions.options());
  acc_t* partials_ptr = partials.mutable_data_ptr<acc_t>();
  const acc_t* scale_ptr = scales.const_data_ptr<acc_t>();
  int64_t first = 0;
  for (const int count : branch_groups(K)) {
    kernel<<<blocks, kThreads, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(),
        pointer_table<const scalar_t>(branches, first, count), pointer_table<scalar_t>(grad_branches, first, count),
        scale_ptr + first, count, first == 0 ? grad_x.mutable_data_ptr<scalar_t>() : nullptr,
        partials_ptr + first * blocks, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    first += count;
  }
  if (K > 0) {
    sum_partials_kernel<acc_t><<<static_cast<unsigned int>(K), kThreads, 0, stream>>>(
        partials_ptr, blocks, contributions.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, bool kRelu>
void launch_backward(const at::Tensor& grad_out, const at::Tensor& out, const std::vector<at::Tensor>& branches,
                     const at::Tensor& scales, at::Tensor& grad_x, std::vector<at::Tensor>& grad_branches,
                     at::Tensor& contributions) {
  constexpr int kVec = vector_width<scalar_t>();
  if (tensors_vector_aligned<kVec, scalar_t>({grad_out, out, grad_x}) &&
      tensors_vector_aligned<kVec, scalar_t>(branches) && tensors_vector_aligned<kVec, scalar_t>(grad_branches)) {
    launch_backward_kernels<scalar_t, kVec, kRelu>(grad_out, out, branches, scales, grad_x, grad_branches,
                                                   contributions);
  } else {
    launch_backward_kernels<scalar_t, 1, kRelu>(grad_out, out, branches, scales, grad_x, grad_branches, contributions);
  }
}

at::Tensor residual_aggregate_cuda(const at::Tensor& x, at::TensorList branches, const at::Tensor& gates,
                                   const at::Tensor& mask, c10::string_view activation) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto ops = prepare_forward(x, branches, gates, mask, activation);
  if (ops.out.numel() == 0) return ops.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "residual_aggregate_cuda", [&] {
    launch_forward<scalar_t>(ops.x, ops.branches, ops.scales, ops.activation == Activation::kRelu, ops.out);
  });
  return ops.out;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> residual_aggregate_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& out, at::TensorList branches, const at::Tensor& gates,
    const at::Tensor& mask, c10::string_view activation) {
  const c10::cuda::CUDAGuard guard(out.device());
  auto ops = prepare_backward(grad_out, out, branches, gates, mask, activation);
  if (ops.out.numel() == 0) {
    ops.contributions.zero_();
  } else {
    const auto dtype = out.scalar_type();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "residual_aggregate_backward_cuda", [&] {
      if (ops.activation == Activation::kRelu) {
        launch_backward<scalar_t, true>(ops.grad_out, ops.out, ops.branches, ops.scales, ops.grad_x,
                                        ops.grad_branches, ops.contributions);
      } else {
        launch_backward<scalar_t, false>(ops.grad_out, ops.out, ops.branches, ops.scales, ops.grad_x,
                                         ops.grad_branches, ops.contributions);
      }
    });
  }
  return {ops.grad_x, ops.grad_branches, ops.contributions};
}

}  // namespace
}  // namespace plasticnet

TORCH_LIBRARY_IMPL(plasticnet, CUDA, m) {
  m.impl("residual_aggregate", &plasticnet::residual_aggregate_cuda);
  m.impl("residual_aggregate_backward", &plasticnet::residual_aggregate_backward_cuda);
}
