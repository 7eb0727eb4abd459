// Schemas of the fused ST-GCN block epilogue out = ReLU(dropout(x) + residual) (method.md §4.2:
// each block ends with Dropout, the residual add and ReLU) and its backward. CPU kernel in
// cpu/epilogue_cpu.cpp; autograd, fake kernels and the plain-PyTorch path in
// skelfast/ops/epilogue.py. Layer: registration (stable ABI).
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(skelfast, m) {
  // x (any shape, contiguous or channels-last), residual (x's shape and strides)?, p in [0, 1],
  // seed of the counter-based mask (skelfast/dropout_math.h) -> out with x's strides.
  m.def("dropout_add_relu(Tensor x, Tensor? residual, float p, int seed) -> Tensor");
  // grad_out (out's shape; contiguous along out's innermost memory dimension, other strides free,
  // e.g. a broadcast pooled gradient) -> (grad_x, grad_residual) with out's strides; grad_residual
  // is an empty (0,) tensor unless residual_grad.
  m.def("dropout_add_relu_backward(Tensor grad_out, Tensor out, float p, int seed, bool residual_grad) "
        "-> (Tensor, Tensor)");
}
