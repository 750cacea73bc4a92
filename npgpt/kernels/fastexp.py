"""exp over a row of floats, vectorised.  Used inside the other kernels.

Numba compiles np.exp to one libm call per element (this build has no
SVML), which costs ~3.5 ns on float32, and a loop with a call in it does
not vectorise.  For float32 this module computes exp(x) = 2^n * e^r,
n = round(x / ln 2), |r| <= ln(2)/2, with a degree-7 Taylor polynomial
for e^r (relative error below 2e-7, float32's own precision) and 2^n
built directly from its bits in an int32 scratch row viewed as float32:
every step is plain arithmetic, so LLVM runs 8 elements per instruction
(~0.7 ns each).  float64, which the gradient checks use, keeps libm's exp.
"""
import math

import numpy as np
from numba import types
from numba.extending import overload

LOG2E = 1.0 / math.log(2.0)
LN2_HI = 0.693145751953125  # ln 2 split in two (Cody-Waite) so n * LN2_HI is exact in float32
LN2_LO = 1.428606820309417232e-06
LOWEST, HIGHEST = -87.0, 88.0  # 2^n stays a normal float32; exp(-87) ~ 1.6e-38


def exp_inplace(x, bits):
    """x (n,) <- exp(x), bits: an int32 scratch row at least as long as x.

    Called from compiled kernels, where the overload below picks the
    version for x's dtype at compile time; this plain version runs when
    NUMBA_DISABLE_JIT=1.
    """
    np.exp(x, out=x)


@overload(exp_inplace, inline="always", fastmath=True)
def _exp_inplace_compiled(x, bits):
    if x.dtype != types.float32:
        def libm_exp(x, bits):
            for i in range(x.size):
                x[i] = np.exp(x[i])
        return libm_exp

    def fast_exp(x, bits):
        n = x.size
        T = np.float32
        for i in range(n):
            z = min(max(x[i], T(LOWEST)), T(HIGHEST))
            nf = np.floor(z * T(LOG2E) + T(0.5))  # n, the nearest integer to z / ln 2
            r = z - nf * T(LN2_HI) - nf * T(LN2_LO)  # z - n ln 2
            p = T(1.0 / 5040)  # Horner: sum r^k / k!, k <= 7
            p = p * r + T(1.0 / 720)
            p = p * r + T(1.0 / 120)
            p = p * r + T(1.0 / 24)
            p = p * r + T(1.0 / 6)
            p = p * r + T(0.5)
            p = p * r + T(1.0)
            x[i] = p * r + T(1.0)
            bits[i] = (np.int32(nf) + np.int32(127)) << np.int32(23)  # the float32 2^n: exponent bits only
        two_to_n = bits[:n].view(np.float32)
        for i in range(n):
            x[i] *= two_to_n[i]
    return fast_exp
