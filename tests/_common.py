"""Test helpers: skeleton inputs, devices, tolerances (engineering.md §7)."""
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (dtype, atol, rtol) for element-wise ops; low precision compared to the reference run in fp32
# on the same (rounded) input and cast to the output dtype.
ELEMENTWISE_TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1.3e-6),
    torch.float16: (2e-3, 2e-3),   # one fp16 ulp at |y| ~ 1 plus atan2 differences
    torch.bfloat16: (1.6e-2, 1.6e-2),  # one bf16 ulp: |y| up to ~30 gives 0.125 absolute at the top
}


def make_skeleton(N=4, T=7, V=25, M=2, dtype=torch.float32, device="cpu", absent=True, seed=0):
    """Random (N, 3, T, V, M) joints; with absent=True, person 1 of sample 0 is all zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 3, T, V, M, generator=g, dtype=torch.float64)
    if absent and N > 0 and M > 1:
        x[0, :, :, :, 1] = 0
    return x.to(device=device, dtype=dtype)


def make_frames(N, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(30, 301, (N,), generator=g).to(device)
