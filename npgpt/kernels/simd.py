"""A 4 x 16 matrix-product tile in explicit SIMD.  Used inside the attention kernel.

    out[oi + r, oj + c]  =  alpha * sum_{s < n} a[ai + r, ak + s] * b[bk + s, bj + c]   (+ out, if accumulate)
                            for r < 4, c < 16

This is how BLAS's inner kernels work: sixteen columns of b are loaded as
vectors, each of the four a values is broadcast to a vector, and 4 x 16
running sums live in registers through the whole s loop, so every load
feeds 16 or 64 multiply-adds.  Attention's products are too small and too
many (one per 64-query block, head and sample, most of them triangular)
to hand to BLAS call by call, and written as plain loops Numba cannot
keep such a tile in registers: it vectorises only innermost loops (LLVM's
SLP vectoriser, which would pack the 64 scalar sums, is off in Numba), so
the sums go through memory.  Here the tile is written in LLVM IR with
<16 x float> vectors (two AVX2 registers, one AVX-512 register; LLVM
splits them to fit any target), and the multiply-add is llvm.fmuladd,
one fused instruction where the CPU has FMA.  In float64, which only the
gradient checks use, the same tile needs four AVX2 registers per row and
spills some sums to memory: correct, not fast.

Contract (not checked: callers keep every index inside the arrays):
a, b, out are C-contiguous 2-D arrays of one float dtype; rows ai..ai+3
of a, columns bj..bj+15 of b and the 4 x 16 block of out exist; n >= 0.

When editing this file, touch attention.py too (or delete its __pycache__):
Numba's on-disk cache checks only the timestamp of the file that defines a
kernel, not of the files whose functions it inlines.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

ROWS, COLS = 4, 16  # the tile: ROWS rows of a, times COLS columns of b


def _is_matrix(t, dtype=None):
    return (isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C"
            and t.dtype in (types.float32, types.float64) and (dtype is None or t.dtype == dtype))


def _splat(builder, scalar, vector_type):
    """scalar -> a vector holding it in every lane."""
    lanes = vector_type.count
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))


def _element_pointer(context, builder, array_type, array, row, col):
    """Address of array[row, col] (no bounds or wrap-around checks)."""
    arr = context.make_array(array_type)(context, builder, array)
    shape = cgutils.unpack_tuple(builder, arr.shape, 2)
    strides = cgutils.unpack_tuple(builder, arr.strides, 2)
    return cgutils.get_item_pointer2(context, builder, arr.data, shape, strides, "C", [row, col],
                                     wraparound=False, boundscheck=False)


def _row_length(context, builder, array_type, array):
    return cgutils.unpack_tuple(builder, context.make_array(array_type)(context, builder, array).shape, 2)[1]


def tile_product(a, ai, ak, b, bk, bj, n, out, oi, oj, alpha, accumulate):
    """The tile in NumPy: the specification the compiled version is tested
    against, and what runs when NUMBA_DISABLE_JIT=1."""
    block = alpha * (a[ai:ai + ROWS, ak:ak + n] @ b[bk:bk + n, bj:bj + COLS])
    if accumulate:
        out[oi:oi + ROWS, oj:oj + COLS] += block
    else:
        out[oi:oi + ROWS, oj:oj + COLS] = block


@overload(tile_product, inline="always")
def _tile_product_compiled(a, ai, ak, b, bk, bj, n, out, oi, oj, alpha, accumulate):
    if not (_is_matrix(a) and _is_matrix(b, a.dtype) and _is_matrix(out, a.dtype)):
        return None
    return lambda a, ai, ak, b, bk, bj, n, out, oi, oj, alpha, accumulate: _simd_tile(
        a, ai, ak, b, bk, bj, n, out, oi, oj, alpha, accumulate)


@intrinsic
def _simd_tile(typingctx, a, ai, ak, b, bk, bj, n, out, oi, oj, alpha, accumulate):
    """tile_product in LLVM IR (see the module docstring)."""
    intp = types.intp
    sig = types.void(a, intp, intp, b, intp, intp, intp, out, intp, intp, a.dtype, types.boolean)

    def codegen(context, builder, signature, args):
        a_val, ai, ak, b_val, bk, bj, n, out_val, oi, oj, alpha, accumulate = args
        a_ty, b_ty, out_ty = signature.args[0], signature.args[3], signature.args[7]
        scalar = context.get_value_type(a_ty.dtype)
        vector = ir.VectorType(scalar, COLS)
        vector_ptr = vector.as_pointer()
        align = context.get_abi_sizeof(scalar)  # rows of b need not start on a vector boundary
        fmuladd = cgutils.get_or_insert_function(  # e.g. llvm.fmuladd.v16f32
            builder.module, ir.FunctionType(vector, [vector] * 3),
            f"llvm.fmuladd.v{COLS}f{8 * context.get_abi_sizeof(scalar)}")

        # Where the s = 0 terms live: a[ai + r, ak] for each row r, and b[bk, bj].
        a_rows = [_element_pointer(context, builder, a_ty, a_val, builder.add(ai, ai.type(r)), ak) for r in range(ROWS)]
        b_start = _element_pointer(context, builder, b_ty, b_val, bk, bj)
        b_row_length = _row_length(context, builder, b_ty, b_val)

        # The 4 running sums (each 16 wide) start at zero; LLVM keeps these slots in registers.
        sums = [cgutils.alloca_once_value(builder, ir.Constant(vector, None)) for _ in range(ROWS)]
        with cgutils.for_range(builder, n) as loop:
            s = loop.index
            b_row = builder.bitcast(builder.gep(b_start, [builder.mul(s, b_row_length)]), vector_ptr)
            b_vec = builder.load(b_row, align=align)
            for r in range(ROWS):
                a_rs = _splat(builder, builder.load(builder.gep(a_rows[r], [s])), vector)
                builder.store(builder.call(fmuladd, [a_rs, b_vec, builder.load(sums[r])]), sums[r])

        alpha_vec = _splat(builder, alpha, vector)
        for r in range(ROWS):
            dest = builder.bitcast(
                _element_pointer(context, builder, out_ty, out_val, builder.add(oi, oi.type(r)), oj), vector_ptr)
            result = builder.fmul(builder.load(sums[r]), alpha_vec)
            with builder.if_then(accumulate):
                builder.store(builder.fadd(result, builder.load(dest, align=align)), dest, align=align)
            with builder.if_then(builder.not_(accumulate)):
                builder.store(result, dest, align=align)
        return context.get_dummy_value()

    return sig, codegen

