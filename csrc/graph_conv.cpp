// Schemas of the grouped ST-GCN spatial unit skelfast::graph_conv and its backward (method.md
// §4.1-§4.2). Kernels attach per device key in cpu/graph_conv_cpu.cpp and cuda/graph_conv_cuda.cu.
// Layer: registration (stable ABI). Autograd and fake kernels live in skelfast/ops/graph_conv.py.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(skelfast, m) {
  // x (B, G*Cin, T, V), weight (G*K*Cout, Cin[, 1, 1]), bias (G*K*Cout)?, A (K, V, V),
  // importance (G, K, V, V)? -> (B, G*Cout, T, V):
  //   out[b,g,c,t,w] = sum_k sum_v (sum_ci W[g,k,c,ci] x[b,g,ci,t,v] + bias[g,k,c]) A[k,v,w] E[g,k,v,w]
  m.def("graph_conv(Tensor x, Tensor weight, Tensor? bias, Tensor A, Tensor? importance, int groups) -> Tensor");
  // -> (grad_x, grad_weight, grad_bias (G*K*Cout,), grad_importance (importance's shape, or (G, K, V, V)))
  m.def("graph_conv_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor A, Tensor? importance, "
        "int groups) -> (Tensor, Tensor, Tensor, Tensor)");
}
