// Every skelfast:: op schema, defined once; kernels attach per device key in cpu/ and cuda/.
// Layer: registration (stable ABI). Autograd and fake kernels live in skelfast/ops/*.py.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(skelfast, m) {
  // method.md §3.3. select: modality ids (0 joint, 1 motion, 2 bone, 3 acceleration,
  // 4 rotation_axis, 5 omega) in output order; normal: [] or [joint, a, b, c].
  m.def("modalities(Tensor x, Tensor? scale, int[] select, int[] bone_parent, int[] axis_partner, "
        "int[] normal) -> Tensor");
  m.def("modalities_backward(Tensor grad_out, Tensor x, Tensor? scale, int[] select, int[] bone_parent, "
        "int[] axis_partner, int[] normal) -> Tensor");
}
