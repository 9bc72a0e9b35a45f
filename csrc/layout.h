// Shared by the CPU and CUDA kernels: argument checks and the layout contract.
// The kernels walk every tensor as one flat array, so all of them must be
// non-overlapping, dense and share one stride order. Inputs that are not are
// copied once into x's layout; outputs are allocated in that layout.
#pragma once
#include <ATen/ATen.h>
#include <string>
#include <vector>

namespace plasticnet {

enum class Activation { kNone, kRelu };

inline Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::kRelu;
  if (name == "none") return Activation::kNone;
  TORCH_CHECK_VALUE(false, "activation: expected 'relu' or 'none', got '", name, "'");
}

inline bool is_flat(const at::Tensor& t) { return t.is_non_overlapping_and_dense(); }

// x itself when it is flat, else a contiguous copy in its suggested memory format.
inline at::Tensor flat_reference(const at::Tensor& x) {
  return is_flat(x) ? x : x.contiguous(x.suggest_memory_format());
}

// t when it already matches ref's layout, else one copy of t into that layout.
inline at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& ref) {
  if (is_flat(t) && t.strides() == ref.strides()) return t;
  return at::empty_like(ref).copy_(t);
}

inline void check_operands(const char* op, const at::Tensor& x, at::TensorList branches,
                           const at::Tensor& gates, const at::Tensor& mask) {
  const int64_t K = static_cast<int64_t>(branches.size());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be floating, got ", x.scalar_type());
  for (int64_t k = 0; k < K; ++k) {
    const auto& h = branches[k];
    TORCH_CHECK_VALUE(h.sizes() == x.sizes(), op, ": branches[", k, "] has shape ", h.sizes(),
                      ", expected x's shape ", x.sizes());
    TORCH_CHECK_TYPE(h.scalar_type() == x.scalar_type(), op, ": branches[", k, "] has dtype ",
                     h.scalar_type(), ", expected x's dtype ", x.scalar_type());
    TORCH_CHECK_VALUE(h.device() == x.device(), op, ": branches[", k, "] is on ", h.device(),
                      ", expected x's device ", x.device());
  }
  for (const auto* v : {&gates, &mask}) {
    const char* name = v == &gates ? "gates" : "mask";
    TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == K, op, ": ", name, " must have shape (", K,
                      ",), got ", v->sizes());
    TORCH_CHECK_VALUE(v->device() == x.device(), op, ": ", name, " is on ", v->device(),
                      ", expected x's device ", x.device());
    TORCH_CHECK_TYPE(at::isFloatingType(v->scalar_type()), op, ": ", name, " must be floating, got ",
                     v->scalar_type());
  }
}

// Per-slot scales s_k = mask_k * gates_k in the accumulation dtype, on x's device.
inline at::Tensor slot_scales(const at::Tensor& x, const at::Tensor& gates, const at::Tensor& mask) {
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return (gates.to(acc) * mask.to(acc)).contiguous();
}

inline at::ScalarType accumulate_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace plasticnet
