// Autograd of plasticnet::residual_aggregate (the op of the CPU and CUDA kernels), on the Autograd key.
// In C++ rather than torch.library.register_autograd because, at a ResNet join's small sizes, the
// Python autograd kernel (its argument flattening, a Python autograd.Function, a Python backward)
// cost several times the kernels themselves. The formula is docs/design.md's: the backward op gives
// (dx, [dh_k], c) and grad gates = mask * c, grad mask = gates * c, each formed only when wanted.
// The backward op keeps its Python autograd formula (residual_aggregate.py), which only a
// higher-order backward reaches: an ordinary backward records no graph and calls it below autograd.
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

namespace plasticnet {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSignature =
    at::Tensor(const at::Tensor&, at::TensorList, const at::Tensor&, const at::Tensor&, c10::string_view);
using BackwardResult = std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor>;
using BackwardSignature = BackwardResult(const at::Tensor&, const at::Tensor&, at::TensorList, const at::Tensor&,
                                         const at::Tensor&, c10::string_view);

const c10::TypedOperatorHandle<ForwardSignature>& forward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("plasticnet::residual_aggregate", "").typed<ForwardSignature>();
  return op;
}

const c10::TypedOperatorHandle<BackwardSignature>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("plasticnet::residual_aggregate_backward", "")
                             .typed<BackwardSignature>();
  return op;
}

// gates and mask are K scalars: an inference one, which autograd cannot save, is saved as a copy.
at::Tensor savable(const at::Tensor& t) { return t.is_inference() ? t.clone() : t; }

class ResidualAggregate : public torch::autograd::Function<ResidualAggregate> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList branches,
                            const at::Tensor& gates, const at::Tensor& mask, c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = forward_op().call(x, branches, gates, mask, activation);
    // The branches serve only c, i.e. grad gates and grad mask: saved only then, as the reference's
    // autograd saves them, so an inference tensor is a valid branch exactly where it is in the reference.
    std::vector<at::Tensor> saved{out, savable(gates), savable(mask)};
    if (gates.requires_grad() || mask.requires_grad()) saved.insert(saved.end(), branches.begin(), branches.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["activation"] = std::string(activation);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& out = saved[0];
    const auto& gates = saved[1];
    const auto& mask = saved[2];
    const auto num_branches = gates.size(0);
    const auto activation = ctx->saved_data["activation"].toStringRef();
    // Without saved branches no c is wanted: the backward op, given none, computes none.
    const std::vector<at::Tensor> branches(saved.begin() + 3, saved.end());
    BackwardResult result;
    if (at::GradMode::is_enabled()) {  // create_graph: the backward op's own autograd records the graph
      result = backward_op().call(grad_outputs[0], out, branches, gates, mask, activation);
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      result = backward_op().call(grad_outputs[0], out, branches, gates, mask, activation);
    }
    auto& [grad_x, grad_branches, contributions] = result;
    variable_list grads;
    grads.reserve(num_branches + 4);
    grads.push_back(std::move(grad_x));
    for (auto& grad : grad_branches) grads.push_back(std::move(grad));
    // Input edges count only the tensors: x, the K branches, then gates and mask. Either needing a
    // gradient means it required one in the forward, which then saved the branches for c.
    const auto acc = contributions.scalar_type();
    grads.push_back(ctx->needs_input_grad(num_branches + 1) ? mask.to(acc).mul(contributions).to(gates.scalar_type())
                                                            : at::Tensor());
    grads.push_back(ctx->needs_input_grad(num_branches + 2) ? gates.to(acc).mul(contributions).to(mask.scalar_type())
                                                            : at::Tensor());
    grads.emplace_back();  // activation
    return grads;
  }
};

bool any_requires_grad(const at::Tensor& x, at::TensorList branches, const at::Tensor& gates,
                       const at::Tensor& mask) {
  if (x.requires_grad() || gates.requires_grad() || mask.requires_grad()) return true;
  for (const auto& h : branches) {
    if (h.requires_grad()) return true;
  }
  return false;
}

at::Tensor residual_aggregate_autograd(const at::Tensor& x, at::TensorList branches, const at::Tensor& gates,
                                       const at::Tensor& mask, c10::string_view activation) {
  if (!at::GradMode::is_enabled() || !any_requires_grad(x, branches, gates, mask)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_op().call(x, branches, gates, mask, activation);
  }
  return ResidualAggregate::apply(x, branches, gates, mask, activation);
}

}  // namespace

TORCH_LIBRARY_IMPL(plasticnet, Autograd, m) { m.impl("residual_aggregate", &residual_aggregate_autograd); }

}  // namespace plasticnet
