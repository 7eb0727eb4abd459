// Schemas of the streaming contrastive ops (method.md §5.3, §5.4, §6.1, §6.2; performance.md §6).
// Layer: registration (stable ABI). Kernels: cpu/losses_cpu.cpp; autograd/fake: skelfast/ops/losses.py.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY_FRAGMENT(skelfast, m) {
  // Streaming log-sum-exps over MoCo queues, never materialising an N x K matrix.
  // Similarity sources m in [0, A + B): S_m = q_m . queue_m (group A: qa (A, N, Da) against
  // queue_a (1 or A, Da, K), columns optionally scaled by col_scale (K,); group B: qb (B, N, Db)
  // against queue_b (B, Db, K), constants).
  //   lse1[a, n] = LSE_j([lpos[a, n], S_a[n, j]] / tau)                     (A, N)
  //   lse2[p, n] = LSE_j(S_{pair_a[p]}[n, j] * S_{pair_b[p]}[n, j] / tau)     (P, N)
  //   topk_idx[m, n, :] = indices of the topk largest S_m[n, :] (descending)   (A + B, N, topk)
  //   jac[a, n, :] = d lse1[a, n] / d qa[a, n, :] when jacobian (gradient in the forward, one extra
  //                  GEMM per chunk instead of a recompute pass in backward), else an empty (0,) tensor.
  m.def("contrastive_lse(Tensor qa, Tensor lpos, Tensor queue_a, Tensor? col_scale, Tensor? qb, "
        "Tensor? queue_b, int[] pair_a, int[] pair_b, float tau, int topk, bool jacobian=False) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
  // Vector-Jacobian product of (lse1, lse2) with respect to qa and lpos (group B and the queues are
  // constants). Recomputes the similarities chunk by chunk (flash-style).
  m.def("contrastive_lse_backward(Tensor grad_lse1, Tensor grad_lse2, Tensor qa, Tensor lpos, Tensor queue_a, "
        "Tensor? col_scale, Tensor? qb, Tensor? queue_b, int[] pair_a, int[] pair_b, float tau, Tensor lse1, "
        "Tensor lse2) -> (Tensor, Tensor)");
}
