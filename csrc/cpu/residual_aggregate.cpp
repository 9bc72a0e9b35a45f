// CPU kernels of plasticnet::residual_aggregate and plasticnet::residual_aggregate_backward
// (schemas and contract: csrc/plasticnet.cpp). One pass over memory each way, parallel over
// fixed-size chunks, vectorised with at::vec.

// at::vec only uses SIMD intrinsics when a CPU_CAPABILITY_* macro is set; PyTorch sets them per
// dispatch-compiled file, an extension must do it itself. Without them Vectorized<T> falls back to
// plain arrays and the fp16/bf16 conversions go element by element. setup.py builds with
// -march=native, so the compiler's own target macros say which instruction set is safe to use.
// This must precede every ATen include of this translation unit.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "layout.h"

namespace plasticnet {
namespace {

// Reductions sum dz*h over fixed chunks, each into its own partial, then add the partials in chunk
// order: the chunk partition, hence every rounding, is independent of the thread count. Chunks
// are also the unit of parallel work.
constexpr int64_t kChunk = 16384;
// Inside a chunk, vector accumulators sum blocks of kBlock elements (a few dozen terms per lane)
// before the block's total is added to a double. Summing a whole chunk, or a > 1M-element tensor,
// in fp32 lanes would lose digits to the growing running sum.
constexpr int64_t kBlock = 1024;
static_assert(kChunk % kBlock == 0, "a chunk must hold whole blocks");

// One SIMD step: Vectorized<scalar_t>::size() elements of scalar_t, held in registers as kParts
// vectors of the accumulation type (two fp32 vectors for fp16/bf16, one otherwise).
template <typename scalar_t>
struct Lanes {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr int64_t kWidth = at::vec::Vectorized<scalar_t>::size();
  static constexpr int kParts = static_cast<int>(kWidth / Vec::size());
  using Pack = std::array<Vec, kParts>;
  static_assert(kBlock % kWidth == 0, "a block must hold whole SIMD steps");

  // Lanes past `count` load as zeros, so a partial step adds nothing to a reduction.
  static Pack load(const scalar_t* p, int64_t count) {
    const auto v = count == kWidth ? at::vec::Vectorized<scalar_t>::loadu(p)
                                   : at::vec::Vectorized<scalar_t>::loadu(p, count);
    if constexpr (kParts == 1) {
      return {v};
    } else {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(v);
      return {lo, hi};
    }
  }

  static void store(scalar_t* p, const Pack& v, int64_t count) {
    if constexpr (kParts == 1) {
      v[0].store(p, count);
    } else {
      at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(p, count);
    }
  }

  // Lane total in a fixed order, widened to double for the cross-block sum.
  static double sum(const Pack& v) {
    alignas(64) acc_t lanes[kWidth];
    for (int p = 0; p < kParts; ++p) v[p].store(lanes + p * Vec::size());
    double total = 0;
    for (int64_t i = 0; i < kWidth; ++i) total += static_cast<double>(lanes[i]);
    return total;
  }
};

int64_t num_chunks(int64_t numel) { return (numel + kChunk - 1) / kChunk; }

// Runs fn(chunk_begin, chunk_end) for every chunk, chunks spread over the intra-op threads.
template <typename F>
void for_each_chunk(int64_t numel, const F& fn) {
  at::parallel_for(0, num_chunks(numel), 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) fn(c, c * kChunk, std::min(numel, (c + 1) * kChunk));
  });
}

template <typename scalar_t>
std::vector<const scalar_t*> data_pointers(const std::vector<at::Tensor>& tensors) {
  std::vector<const scalar_t*> pointers;
  pointers.reserve(tensors.size());
  for (const auto& t : tensors) pointers.push_back(t.const_data_ptr<scalar_t>());
  return pointers;
}

// s_k = gates_k * mask_k (both already in the accumulation dtype, layout.h), broadcast to one vector
// each. Read on the host: they are CPU tensors.
template <typename scalar_t>
std::vector<typename Lanes<scalar_t>::Vec> broadcast_scales(const at::Tensor& gates, const at::Tensor& mask) {
  using acc_t = typename Lanes<scalar_t>::acc_t;
  const auto ga = gates.template accessor<acc_t, 1>();
  const auto ma = mask.template accessor<acc_t, 1>();
  std::vector<typename Lanes<scalar_t>::Vec> s;
  s.reserve(ga.size(0));
  for (int64_t k = 0; k < ga.size(0); ++k) s.emplace_back(ga[k] * ma[k]);
  return s;
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const std::vector<at::Tensor>& branches, const at::Tensor& gates,
                    const at::Tensor& mask, Activation activation, at::Tensor& y) {
  using L = Lanes<scalar_t>;
  const int64_t K = static_cast<int64_t>(branches.size());
  const auto h = data_pointers<scalar_t>(branches);
  const auto s = broadcast_scales<scalar_t>(gates, mask);
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
  const bool relu = activation == Activation::kRelu;
  const typename L::Vec zero(0);

  for_each_chunk(x.numel(), [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i += L::kWidth) {
      const int64_t n = std::min(L::kWidth, end - i);
      auto z = L::load(x_data + i, n);
      for (int64_t k = 0; k < K; ++k) {
        const auto hk = L::load(h[k] + i, n);
        for (int p = 0; p < L::kParts; ++p) z[p] = at::vec::fmadd(hk[p], s[k], z[p]);
      }
      // maximum (not clamp_min) so that a NaN pre-activation stays NaN, as torch.relu does.
      if (relu) for (int p = 0; p < L::kParts; ++p) z[p] = at::vec::maximum(z[p], zero);
      L::store(y_data + i, z, n);
    }
  });
}

// Writes grad_x and grad_branches, and returns the per-chunk partials of c_k as a (num_chunks, C)
// row-major array: C = K with the branches given, 0 (nothing read, nothing summed) without them.
template <typename scalar_t>
std::vector<double> backward_kernel(const at::Tensor& grad_out, const at::Tensor& out,
                                    const std::vector<at::Tensor>& branches, const at::Tensor& gates,
                                    const at::Tensor& mask, Activation activation, at::Tensor& grad_x,
                                    std::vector<at::Tensor>& grad_branches) {
  using L = Lanes<scalar_t>;
  const int64_t K = static_cast<int64_t>(grad_branches.size());
  const int64_t C = static_cast<int64_t>(branches.size());
  const int64_t numel = out.numel();
  const auto h = data_pointers<scalar_t>(branches);
  const auto s = broadcast_scales<scalar_t>(gates, mask);
  std::vector<scalar_t*> grad_h;
  grad_h.reserve(grad_branches.size());
  for (auto& g : grad_branches) grad_h.push_back(g.mutable_data_ptr<scalar_t>());
  const scalar_t* grad_out_data = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* out_data = out.const_data_ptr<scalar_t>();
  scalar_t* grad_x_data = grad_x.mutable_data_ptr<scalar_t>();
  const bool relu = activation == Activation::kRelu;
  const typename L::Vec zero(0);
  std::vector<double> partials(num_chunks(numel) * C, 0.0);

  for_each_chunk(numel, [&](int64_t chunk, int64_t begin, int64_t end) {
    std::vector<typename L::Pack> acc(C);
    double* partial = partials.data() + chunk * C;
    for (int64_t block = begin; block < end; block += kBlock) {
      const int64_t block_end = std::min(end, block + kBlock);
      std::fill(acc.begin(), acc.end(), typename L::Pack{});
      for (int64_t i = block; i < block_end; i += L::kWidth) {
        const int64_t n = std::min(L::kWidth, block_end - i);
        auto dz = L::load(grad_out_data + i, n);
        if (relu) {
          // torch.relu's rule: 0 where out <= 0, else grad_out, so the gradient passes where out is NaN.
          // A select, not a multiply by the mask: a non-finite grad_out where relu is off gives 0.
          const auto o = L::load(out_data + i, n);
          for (int p = 0; p < L::kParts; ++p) dz[p] = L::Vec::blendv(dz[p], zero, o[p] <= zero);
        }
        L::store(grad_x_data + i, dz, n);
        for (int64_t k = 0; k < C; ++k) {
          const auto hk = L::load(h[k] + i, n);
          for (int p = 0; p < L::kParts; ++p) acc[k][p] = at::vec::fmadd(dz[p], hk[p], acc[k][p]);
        }
        for (int64_t k = 0; k < K; ++k) {
          typename L::Pack grad_hk;
          for (int p = 0; p < L::kParts; ++p) grad_hk[p] = dz[p] * s[k];
          L::store(grad_h[k] + i, grad_hk, n);
        }
      }
      for (int64_t k = 0; k < C; ++k) partial[k] += L::sum(acc[k]);
    }
  });
  return partials;
}

at::Tensor residual_aggregate_cpu(const at::Tensor& x, at::TensorList branches, const at::Tensor& gates,
                                  const at::Tensor& mask, c10::string_view activation) {
  auto ops = prepare_forward(x, branches, gates, mask, activation);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "residual_aggregate_cpu", [&] {
    forward_kernel<scalar_t>(ops.x, ops.branches, ops.gates, ops.mask, ops.activation, ops.out);
  });
  return ops.out;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> residual_aggregate_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, at::TensorList branches, const at::Tensor& gates,
    const at::Tensor& mask, c10::string_view activation) {
  auto ops = prepare_backward(grad_out, out, branches, gates, mask, activation);
  const int64_t C = ops.contributions.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "residual_aggregate_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto partials = backward_kernel<scalar_t>(ops.grad_out, ops.out, ops.branches, ops.gates, ops.mask,
                                                    ops.activation, ops.grad_x, ops.grad_branches);
    auto* c = ops.contributions.mutable_data_ptr<acc_t>();
    const int64_t chunks = num_chunks(out.numel());
    for (int64_t k = 0; k < C; ++k) {
      double total = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partials[chunk * C + k];
      c[k] = static_cast<acc_t>(total);
    }
  });
  return {ops.grad_x, ops.grad_branches, ops.contributions};
}

}  // namespace
}  // namespace plasticnet

TORCH_LIBRARY_IMPL(plasticnet, CPU, m) {
  m.impl("residual_aggregate", &plasticnet::residual_aggregate_cpu);
  m.impl("residual_aggregate_backward", &plasticnet::residual_aggregate_backward_cpu);
}
