"""Small Triton device helpers: 3-vectors as tuples, nrm, and an atan2 that also runs under
TRITON_INTERPRET=1 (libdevice.atan2 has no interpreter implementation)."""
import triton
import triton.language as tl

PI = 3.141592653589793


@triton.jit
def atan01(z):
    """atan(z) for z in [0, 1]: Cephes atanf range reduction at tan(pi/8), ~1 ulp in fp32."""
    big = z > 0.41421356237309503
    w = tl.where(big, (z - 1.0) / (z + 1.0), z)
    w2 = w * w
    p = (((8.05374449538e-2 * w2 - 1.38776856032e-1) * w2 + 1.99777106478e-1) * w2 - 3.33329491539e-1) * w2 * w + w
    return tl.where(big, 0.7853981633974483 + p, p)


@triton.jit
def atan2(y, x):
    """atan2(y, x) with atan2(0, 0) = 0, as torch.atan2."""
    ay = tl.abs(y)
    ax = tl.abs(x)
    hi = tl.maximum(ay, ax)
    lo = tl.minimum(ay, ax)
    a = atan01(lo / tl.where(hi > 0, hi, 1.0))
    a = tl.where(ay > ax, 1.5707963267948966 - a, a)
    a = tl.where(x < 0, 3.141592653589793 - a, a)
    return tl.where(y < 0, -a, a)


@triton.jit
def cross3(ax, ay, az, bx, by, bz):
    return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


@triton.jit
def nrm3(x, y, z):
    """u / max(|u|, 1e-12) (method.md §3.1)."""
    d = tl.maximum(tl.sqrt(x * x + y * y + z * z), 1e-12)
    return x / d, y / d, z / d
