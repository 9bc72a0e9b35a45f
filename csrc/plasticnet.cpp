// Declares the schemas of the compiled kernels' ops. Kernels register implementations beside their
// code: csrc/cpu (CPU key), csrc/cuda (CUDA key); csrc/autograd.cpp the forward's autograd (Autograd
// key). The fake (meta) kernels and the backward's own autograd are in plasticnet/ops/residual_aggregate.py.
// The Triton ops (*_triton) are declared in Python by torch.library.triton_op
// (plasticnet/ops/triton_residual_aggregate.py), so they exist without this extension.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import plasticnet._C` loads this library, which runs the registrations
// below. The module itself has no Python API: everything goes through torch.ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

TORCH_LIBRARY(plasticnet, m) {
  // y = act(x + sum_k mask[k] * gates[k] * branches[k]),  activation in {"relu", "none"}.
  // Kernels: csrc/cpu/residual_aggregate.cpp, csrc/cuda/residual_aggregate.cu.
  m.def("residual_aggregate(Tensor x, Tensor[] branches, Tensor gates, Tensor mask, str activation) -> Tensor");
  // Returns (grad_x, grad_branches, contributions) where, with dz = grad_out * act'(out):
  //   grad_x = dz, grad_branches[k] = mask[k]*gates[k]*dz, contributions[k] = sum(dz * branches[k]).
  // `out` is the forward's result (relu' is read off it). contributions: fp32 (fp64 for fp64 inputs).
  // K is the length of gates and mask. `branches` are the forward's K branches, or an empty list when
  // no contribution is wanted (no gate or mask needs a gradient): no branch is then read and
  // contributions is empty, while grad_branches still holds K gradients.
  m.def(
      "residual_aggregate_backward(Tensor grad_out, Tensor out, Tensor[] branches, Tensor gates, Tensor mask, "
      "str activation) -> (Tensor, Tensor[], Tensor)");
}
