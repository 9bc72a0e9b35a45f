// CUDA kernels of plasticnet::residual_aggregate and its backward (contract: csrc/plasticnet.cpp).
//
// Every tensor is walked as one flat array in x's layout (csrc/layout.h), with grid-stride loops,
// 64-bit indices and the widest accesses (16, 8, 4 or 2 bytes) that every pointer allows. The branch
// count of a launch is a template parameter (0 to 8): each iteration issues all its loads, with no
// runtime test per branch, before its first store (see load_pack). Branch pointers travel
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

#include <string>
#include <tuple>
#include <vector>

#include "cuda/access.cuh"
#include "layout.h"

namespace plasticnet {
namespace {

// ---- forward ----

// dst = act(base + sum_k scale[k] * branches[k]) for one pack of kVec elements, kBranches known at
// compile time: every branch's load is issued, unconditionally, before the first FMA and the store.
template <int kVec, int kBranches, typename scalar_t, typename base_t, typename dst_t, typename acc_t>
__device__ __forceinline__ void forward_pack(int64_t pack, const base_t* base,
                                             const PointerTable<const scalar_t>& branches,
                                             const acc_t (&scale)[slots<kBranches>()], bool relu, dst_t* dst) {
  acc_t h[slots<kBranches>()][kVec];
#pragma unroll
  for (int k = 0; k < kBranches; ++k) load_pack<kVec>(branches.ptr[k], pack, h[k]);
  acc_t z[kVec];
  load_pack<kVec>(base, pack, z);
#pragma unroll
  for (int k = 0; k < kBranches; ++k) {
#pragma unroll
    for (int j = 0; j < kVec; ++j) z[j] += scale[k] * h[k][j];
  }
  if (relu) {
    // `z < 0` rather than max(z, 0): NaN passes through, as in torch.relu.
#pragma unroll
    for (int j = 0; j < kVec; ++j) z[j] = z[j] < acc_t(0) ? acc_t(0) : z[j];
  }
  store_pack<kVec>(dst, pack, z);
}

// base and dst may be the same buffer (the running sum of a middle group).
template <typename scalar_t, typename base_t, typename dst_t, int kVec, int kBranches>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const base_t* base, PointerTable<const scalar_t> branches,
                   Scales<at::opmath_type<scalar_t>> scales, bool relu, dst_t* dst, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t scale[slots<kBranches>()];
  load_scales<kBranches>(scales, scale);
  grid_stride<kVec>(
      n, [&](int64_t p) { forward_pack<kVec, kBranches>(p, base, branches, scale, relu, dst); },
      [&](int64_t i) { forward_pack<1, kBranches>(i, base, branches, scale, relu, dst); });
}

// ---- backward ----

// One pack of the backward: dz = out <= 0 ? 0 : grad_out (relu) or grad_out, grad_x = dz (when
// grad_x is given), grad_branches[k] = scale[k] * dz, and with `contributions` (uniform over the grid)
// contribution[k] += sum(dz * branches[k]); without it no branch is read.
// Every load (grad_out, out, each branch) is issued before the first store.
template <int kVec, bool kRelu, int kBranches, typename scalar_t, typename acc_t>
__device__ __forceinline__ void backward_pack(int64_t pack, const scalar_t* grad_out, const scalar_t* out,
                                              const PointerTable<const scalar_t>& branches,
                                              const PointerTable<scalar_t>& grad_branches,
                                              const acc_t (&scale)[slots<kBranches>()], scalar_t* grad_x,
                                              bool contributions, acc_t (&contribution)[slots<kBranches>()]) {
  acc_t dz[kVec];
  load_pack<kVec>(grad_out, pack, dz);
  acc_t y[kVec];
  if constexpr (kRelu) load_pack<kVec>(out, pack, y);
  acc_t h[slots<kBranches>()][kVec];
  if (contributions) {
#pragma unroll
    for (int k = 0; k < kBranches; ++k) load_pack<kVec>(branches.ptr[k], pack, h[k]);
  }
  if constexpr (kRelu) {
    // torch.relu's rule, so the gradient passes where out is NaN. A select, not a multiply by the 0/1
    // mask: a non-finite grad_out where relu is off gives 0, as in torch (inf * 0 would make NaN).
#pragma unroll
    for (int j = 0; j < kVec; ++j) dz[j] = y[j] <= acc_t(0) ? acc_t(0) : dz[j];
  }
  if (grad_x != nullptr) store_pack<kVec>(grad_x, pack, dz);
#pragma unroll
  for (int k = 0; k < kBranches; ++k) {
    acc_t dh[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) dh[j] = scale[k] * dz[j];
    if (contributions) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) contribution[k] += dz[j] * h[k][j];
    }
    store_pack<kVec>(grad_branches.ptr[k], pack, dh);
  }
}

// partials: row k (stride gridDim.x) receives this block's share of contribution k; null when no
// contribution is wanted. Only the pointers the kernel never writes through are __restrict__ (see load_pack).
template <typename scalar_t, int kVec, bool kRelu, int kBranches>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ out,
                    PointerTable<const scalar_t> branches, PointerTable<scalar_t> grad_branches,
                    Scales<at::opmath_type<scalar_t>> scales, scalar_t* grad_x,
                    at::opmath_type<scalar_t>* partials, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t scale[slots<kBranches>()];
  load_scales<kBranches>(scales, scale);
  acc_t contribution[slots<kBranches>()];
#pragma unroll
  for (int k = 0; k < slots<kBranches>(); ++k) contribution[k] = acc_t(0);
  const bool contributions = partials != nullptr;
  grid_stride<kVec>(
      n,
      [&](int64_t p) {
        backward_pack<kVec, kRelu, kBranches>(p, grad_out, out, branches, grad_branches, scale, grad_x, contributions,
                                              contribution);
      },
      [&](int64_t i) {
        backward_pack<1, kRelu, kBranches>(i, grad_out, out, branches, grad_branches, scale, grad_x, contributions,
                                           contribution);
      });
  if (contributions) block_sum_store(contribution, kBranches, partials + blockIdx.x, gridDim.x);
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

template <typename scalar_t, int kVec, int kBranches, typename base_t, typename dst_t>
void launch_forward_group(const base_t* base, const PointerTable<const scalar_t>& branches,
                          const Scales<at::opmath_type<scalar_t>>& scales, bool relu, dst_t* dst, int64_t n) {
  constexpr auto kernel = forward_kernel<scalar_t, base_t, dst_t, kVec, kBranches>;
  kernel<<<grid_size<kernel>(n / kVec), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(base, branches, scales,
                                                                                          relu, dst, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int kVec>
void launch_forward(const at::Tensor& x, const std::vector<at::Tensor>& branches,
                    const Scales<at::opmath_type<scalar_t>>& scales, bool relu, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = out.numel();
  const auto groups = branch_groups(static_cast<int64_t>(branches.size()));
  const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  // Only the last group has fewer than kBranchesPerLaunch branches: only it needs every count.
  const auto last_group = [&](const auto* base, int64_t first) {
    with_branch_count(groups.back(), [&](auto count) {
      launch_forward_group<scalar_t, kVec, decltype(count)::value>(
          base, pointer_table<const scalar_t>(branches, first, groups.back()), scales.from(first), relu, out_ptr, n);
    });
  };
  if (groups.size() == 1) {
    last_group(x_ptr, 0);
    return;
  }
  // Running sum between groups: out itself when it already has the accumulation dtype.
  const at::Tensor running =
      std::is_same_v<scalar_t, acc_t> ? out : at::empty({n}, out.options().dtype(accumulate_type(out)));
  acc_t* running_ptr = running.mutable_data_ptr<acc_t>();
  int64_t first = 0;
  for (size_t g = 0; g + 1 < groups.size(); ++g, first += kBranchesPerLaunch) {
    const auto table = pointer_table<const scalar_t>(branches, first, kBranchesPerLaunch);
    if (g == 0) {
      launch_forward_group<scalar_t, kVec, kBranchesPerLaunch>(x_ptr, table, scales, false, running_ptr, n);
    } else {
      launch_forward_group<scalar_t, kVec, kBranchesPerLaunch>(running_ptr, table, scales.from(first), false,
                                                               running_ptr, n);
    }
  }
  last_group(static_cast<const acc_t*>(running_ptr), first);
}

template <typename scalar_t, int kVec, bool kRelu>
void launch_backward(const at::Tensor& grad_out, const at::Tensor& out, const std::vector<at::Tensor>& branches,
                     const Scales<at::opmath_type<scalar_t>>& scales, at::Tensor& grad_x,
                     std::vector<at::Tensor>& grad_branches, at::Tensor& contributions) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = out.numel();
  const int64_t K = static_cast<int64_t>(grad_branches.size());
  const bool wants_contributions = !branches.empty();  // else no branch is given, read or summed
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto groups = branch_groups(K);
  // One grid for every group, sized for the first (the widest) kernel, so the partials are one
  // (K, blocks) buffer and their second-stage sum one launch.
  int blocks = 0;
  with_branch_count(groups.front(), [&](auto count) {
    blocks = grid_size<backward_kernel<scalar_t, kVec, kRelu, decltype(count)::value>>(n / kVec);
  });
  const at::Tensor partials = at::empty({wants_contributions ? K : 0, blocks}, contributions.options());
  acc_t* partials_ptr = wants_contributions ? partials.mutable_data_ptr<acc_t>() : nullptr;
  int64_t first = 0;
  for (const int group : groups) {
    // Later groups read dz from grad_x, with the activation already applied (masking never rounds).
    const bool is_first = first == 0;
    const scalar_t* incoming = is_first ? grad_out.const_data_ptr<scalar_t>() : grad_x.const_data_ptr<scalar_t>();
    with_branch_count(group, [&](auto count) {
      constexpr int kCount = decltype(count)::value;
      const auto table = pointer_table<const scalar_t>(branches, first, wants_contributions ? group : 0);
      const auto grad_table = pointer_table<scalar_t>(grad_branches, first, group);
      scalar_t* grad_x_ptr = is_first ? grad_x.mutable_data_ptr<scalar_t>() : nullptr;
      if (is_first) {
        backward_kernel<scalar_t, kVec, kRelu, kCount><<<blocks, kThreads, 0, stream>>>(
            incoming, out.const_data_ptr<scalar_t>(), table, grad_table, scales, grad_x_ptr, partials_ptr, n);
      } else {
        backward_kernel<scalar_t, kVec, false, kCount><<<blocks, kThreads, 0, stream>>>(
            incoming, out.const_data_ptr<scalar_t>(), table, grad_table, scales.from(first), grad_x_ptr,
            wants_contributions ? partials_ptr + first * blocks : nullptr, n);
      }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    first += group;
  }
  if (wants_contributions && K > 0) {
    sum_partials_kernel<acc_t><<<static_cast<unsigned int>(K), kThreads, 0, stream>>>(
        partials_ptr, blocks, contributions.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

at::Tensor residual_aggregate_cuda(const at::Tensor& x, at::TensorList branches, const at::Tensor& gates,
                                   const at::Tensor& mask, c10::string_view activation) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto ops = prepare_forward(x, branches, gates, mask, activation);
  if (ops.out.numel() == 0) return ops.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "residual_aggregate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<at::Tensor> ends{ops.x, ops.out};
    with_vector_width<scalar_t>(common_alignment<scalar_t>({&ends, &ops.branches}), [&](auto vec) {
      launch_forward<scalar_t, decltype(vec)::value>(ops.x, ops.branches, scales_of<acc_t>(ops.gates, ops.mask),
                                                      ops.activation == Activation::kRelu, ops.out);
    });
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
      using acc_t = at::opmath_type<scalar_t>;
      const std::vector<at::Tensor> ends{ops.grad_out, ops.out, ops.grad_x};
      const int alignment = common_alignment<scalar_t>({&ends, &ops.branches, &ops.grad_branches});
      const auto scales = scales_of<acc_t>(ops.gates, ops.mask);
      with_vector_width<scalar_t>(alignment, [&](auto vec) {
        constexpr int kVec = decltype(vec)::value;
        if (ops.activation == Activation::kRelu) {
          launch_backward<scalar_t, kVec, true>(ops.grad_out, ops.out, ops.branches, scales, ops.grad_x,
                                                ops.grad_branches, ops.contributions);
        } else {
          launch_backward<scalar_t, kVec, false>(ops.grad_out, ops.out, ops.branches, scales, ops.grad_x,
                                                 ops.grad_branches, ops.contributions);
        }
      });
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
