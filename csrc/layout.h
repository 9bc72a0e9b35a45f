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

// Each of `tensors` in ref's flat layout (one copy for those that are not), so all walk as flat arrays.
inline std::vector<at::Tensor> in_layout(at::TensorList tensors, const at::Tensor& ref) {
  std::vector<at::Tensor> flat;
  flat.reserve(tensors.size());
  for (const auto& t : tensors) flat.push_back(in_layout_of(t, ref));
  return flat;
}

// "[index]" after an argument's name, or nothing for index -1: formed only for a message, since the
// checks run on every call and a passing one should build no strings.
inline std::string index_suffix(int64_t index) { return index < 0 ? "" : "[" + std::to_string(index) + "]"; }

// `t` (called `name`, or `name[index]`) must have the shape, dtype and device of `ref` (called `ref_name`).
// Messages follow the Python layer's: "<op>: <argument>: expected <what>, got <what>".
inline void check_like(const char* op, const char* name, int64_t index, const at::Tensor& t, const char* ref_name,
                       const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": ", name, index_suffix(index), ": expected ", ref_name,
                    "'s shape ", ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, index_suffix(index), ": expected ",
                   ref_name, "'s dtype ", ref.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, index_suffix(index), ": expected ", ref_name,
                    "'s device ", ref.device(), ", got ", t.device());
}

// K: the number of branches, which gates and mask must match; `branches` holds K tensors, or none where
// the caller allows it (the backward without contributions). x_name: what the caller calls x (the
// backward checks its `out` against the same contract).
inline void check_operands(const char* op, const at::Tensor& x, at::TensorList branches, int64_t K,
                           const at::Tensor& gates, const at::Tensor& mask, const char* x_name = "x") {
  const auto dtype = x.scalar_type();
  // The kernels are instantiated for exactly these; other floating types (fp8) must not reach them.
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
                   ": ", x_name, ": expected dtype float32, bfloat16, float16 or float64, got ", dtype);
  for (int64_t k = 0; k < static_cast<int64_t>(branches.size()); ++k) {
    check_like(op, "branches", k, branches[k], x_name, x);
  }
  for (const auto* v : {&gates, &mask}) {
    const char* name = v == &gates ? "gates" : "mask";
    TORCH_CHECK_VALUE(v->dim() == 1 && v->size(0) == K, op, ": ", name, ": expected shape (", K,
                      ",) (one per branch), got ", v->sizes());
    TORCH_CHECK_VALUE(v->device() == x.device(), op, ": ", name, ": expected ", x_name, "'s device ", x.device(),
                      ", got ", v->device());
    TORCH_CHECK_TYPE(at::isFloatingType(v->scalar_type()), op, ": ", name, ": expected a floating dtype, got ",
                     v->scalar_type());
  }
}

inline at::ScalarType accumulate_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A forward call's operands, checked and in one flat layout, with its output allocated.
struct ForwardOperands {
  at::Tensor x;
  std::vector<at::Tensor> branches;
  // In the accumulation dtype (the tensors themselves when they have it). The kernels form the scales
  // s_k = gates_k * mask_k themselves: a scales tensor would cost a small join an op per call.
  at::Tensor gates, mask;
  Activation activation;
  at::Tensor out;
};

inline ForwardOperands prepare_forward(const at::Tensor& x, at::TensorList branches, const at::Tensor& gates,
                                       const at::Tensor& mask, c10::string_view activation) {
  check_operands("residual_aggregate", x, branches, static_cast<int64_t>(branches.size()), gates, mask);
  const auto act = parse_activation(std::string(activation));
  auto flat_x = flat_reference(x);
  auto flat_branches = in_layout(branches, flat_x);
  const auto acc = accumulate_type(x);
  auto out = at::empty_like(flat_x);
  return {std::move(flat_x), std::move(flat_branches), gates.to(acc), mask.to(acc), act, std::move(out)};
}

// A backward call's operands, checked and in out's flat layout, with its outputs allocated.
struct BackwardOperands {
  at::Tensor grad_out, out;
  std::vector<at::Tensor> branches;  // the K branches, or none when no contribution is wanted
  at::Tensor gates, mask;  // in the accumulation dtype, as in ForwardOperands
  Activation activation;
  at::Tensor grad_x;
  std::vector<at::Tensor> grad_branches;
  at::Tensor contributions;  // (K,) in the accumulation dtype, or (0,) when no contribution is wanted
};

inline BackwardOperands prepare_backward(const at::Tensor& grad_out, const at::Tensor& out, at::TensorList branches,
                                         const at::Tensor& gates, const at::Tensor& mask,
                                         c10::string_view activation) {
  constexpr const char* op = "residual_aggregate_backward";
  // Without branches, no contribution is wanted, and gates say how many branches there were.
  TORCH_CHECK_VALUE(!branches.empty() || gates.dim() == 1, op,
                    ": gates: expected shape (K,) (one per branch), got ", gates.sizes());
  const int64_t K = branches.empty() ? gates.size(0) : static_cast<int64_t>(branches.size());
  check_operands(op, out, branches, K, gates, mask, "out");
  check_like(op, "grad_out", -1, grad_out, "out", out);
  const auto act = parse_activation(std::string(activation));
  auto flat_out = flat_reference(out);
  auto flat_grad_out = in_layout_of(grad_out, flat_out);
  auto flat_branches = in_layout(branches, flat_out);
  const auto acc = accumulate_type(out);
  auto grad_x = at::empty_like(flat_out);
  std::vector<at::Tensor> grad_branches;
  grad_branches.reserve(K);
  for (int64_t k = 0; k < K; ++k) grad_branches.push_back(at::empty_like(flat_out));
  auto contributions = at::empty({static_cast<int64_t>(branches.size())}, out.options().dtype(acc));
  return {std::move(flat_grad_out), std::move(flat_out), std::move(flat_branches), gates.to(acc), mask.to(acc), act,
          std::move(grad_x), std::move(grad_branches), std::move(contributions)};
}

}  // namespace plasticnet
