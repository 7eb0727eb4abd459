// Schemas of the fused BatchNorm + ReLU of an ST-GCN block, out = ReLU(dropout(BN(x)) + residual)
// (method.md §4.2: the temporal unit is BN, ReLU, conv, BN, Dropout, then the residual add and
// ReLU; BN1+ReLU and BN2+dropout+add+ReLU are both this op), and its backward. CPU kernel in
// cpu/batch_norm_relu_cpu.cpp; autograd, running statistics, fake kernels and the plain-PyTorch
// path in skelfast/ops/batch_norm_relu.py. Layer: registration (stable ABI).
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(skelfast, m) {
  // x (B, C, ...) contiguous or channels-last; weight, bias (C,); mean and var (C,) both given
  // (normalise with them: eval mode) or both None (batch statistics over all dims but 1: training);
  // residual (x's shape and strides)?; eps >= 0; p in [0, 1] and the seed of the counter-based
  // dropout mask (skelfast/dropout_math.h, on x's memory offsets, as dropout_add_relu).
  // -> (out with x's strides, mean (C,), invstd (C,), var (C,)): the statistics used, var biased.
  m.def("batch_norm_relu(Tensor x, Tensor weight, Tensor bias, Tensor? mean, Tensor? var, Tensor? residual, "
        "float eps, float p, int seed) -> (Tensor, Tensor, Tensor, Tensor)");
  // grad_out (out's shape; contiguous along out's innermost memory dimension, other strides free);
  // batch_stats: the forward used batch statistics (their gradient terms are included).
  // -> (grad_x with out's strides, grad_weight (C,), grad_bias (C,), grad_residual: empty (0,)
  // unless residual_grad).
  m.def("batch_norm_relu_backward(Tensor grad_out, Tensor out, Tensor x, Tensor weight, Tensor mean, Tensor invstd, "
        "bool batch_stats, float p, int seed, bool residual_grad) -> (Tensor, Tensor, Tensor, Tensor)");
}
