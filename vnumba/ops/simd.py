"""Explicit SIMD vectors for Numba kernels (private).

Numba has no vector type: its loop vectoriser decides how a loop becomes SIMD code, and for
a convolution it vectorises the innermost loop over a row with the accumulators in memory
(load/store bound, ``bench/README.md``).  A register-tiled convolution needs a dozen vector
accumulators that live in registers across the whole tap loop.  This module gives kernels a
value type for one machine vector, ``Vec(dtype, lanes)`` (an LLVM ``<lanes x float>``), and
the few operations the kernels need, so a tile can be written as plain Numba code with named
accumulators — LLVM keeps such SSA values in registers, which it does not reliably do for a
small local array.

The vector width follows the CPU that Numba compiles for, chosen once at import
(:func:`choose_vector_bits`): 512 bits (16 float32 or 8 float64 lanes) with AVX-512, 256 with
AVX2 and FMA, 128 otherwise (SSE or NEON; correct everywhere: LLVM splits a vector the target
cannot hold).  ``VNUMBA_SIMD_BITS=128|256|512`` forces a width (tests, comparisons).  Compiled
code embeds the width, and Numba's on-disk cache does not know about a module constant, so
every kernel that uses these vectors is declared with :func:`jit` (``njit`` whose cache entries
carry the width: one process per width, both cached side by side).

Reductions whose rounding must not depend on the width (the kernel gradient) use the
*canonical* vectors instead: ``wlanes``, ``wsplat``, ``wload``, ``wload_head``, ``wtailmask``
build vectors of :data:`CANONICAL_BYTES` (256 bits) whatever the host (on a 128-bit one LLVM
splits them into halves, lane for lane the same arithmetic), and the lane-generic operations
below take them too.

Operations (all ``inline``; none checks bounds or wraps negative indices — the caller
guarantees ``0 <= i`` and ``i + lanes <= len(row)``):

* ``lanes(arr)`` — number of lanes of a vector of ``arr.dtype`` (compile-time constant);
* ``vsplat(x)`` — every lane ``x``;
* ``vbcast(arr, i)`` — every lane ``arr[i]``;
* ``vload(row, i)`` / ``vstore(row, i, v)`` — ``row[i:i + lanes]`` of a 1-D contiguous array
  (unaligned); ``vload_head(row, i, n)`` — the first ``n`` of them, zeros after;
* ``vfma(a, b, c)`` — ``a * b + c`` rounded once (IEEE fused multiply-add), lane by lane;
  ``sfma(a, b, c)`` the same on scalars, so that scalar code computes a value exactly as a
  vector lane does;
* ``vadd``, ``vsub``, ``vmul``, ``vdiv``, ``vfloor`` — lane by lane; ``vwhere_between(x, lo,
  hi, a, b)`` — ``a`` where ``lo <= x <= hi``, else ``b``; ``vstore_index(row, i, v, off)`` —
  ``int32(v) + off`` into an int32 row;
* ``vlanes(v)`` — number of lanes of the vector ``v``; ``vsum(v)`` — the sum of the lanes;
  ``vtailmask(x, n)`` — 1 in the last ``n`` lanes, 0 before them;
* ``vneg(v)`` — ``-v`` (sign flip); ``vcells(row, i, off, like)`` — int32 lanes
  ``row[i + k] - off``; ``vlookup64(tab, base, idx)`` — lane k ``tab[base + idx[k]]`` from a
  64-entry table in registers (AVX-512 permutes where :data:`PERMUTE_LOOKUP`);
* ``load(arr, i)`` — the scalar ``arr[i]`` (for table look-ups in scalar loops); ``sfloor`` —
  ``floor`` of a scalar in its own dtype.
"""
from __future__ import annotations

import os

import llvmlite.binding as _llvm
import numba
from llvmlite import ir
from numba import types
from numba.core import caching, cgutils
from numba.core import config as _numba_config
from numba.extending import intrinsic, models, register_model

__all__ = ["Vec", "ENV_VAR", "VECTOR_BITS", "VECTOR_BYTES", "CANONICAL_BYTES", "PERMUTE_LOOKUP",
           "choose_vector_bits", "target_features", "describe", "jit", "lanes", "vsplat", "vbcast", "vload",
           "vload_head", "vstore", "vstore_index", "vfma", "vadd", "vsub", "vmul", "vdiv", "vneg", "vfloor",
           "vwhere_between", "vsum", "vlanes", "vtailmask", "vcells", "vlookup64", "wlanes", "wsplat", "wload",
           "wload_head", "wtailmask", "sfma", "sfloor", "load"]

ENV_VAR = "VNUMBA_SIMD_BITS"
WIDTHS = (128, 256, 512)
CANONICAL_BYTES = 32  # reductions are grouped by 256-bit vectors at every width (fused.py says why)


def target_features() -> set[str]:
    """ISA features of the code Numba generates: ``NUMBA_CPU_FEATURES`` where set (Numba
    passes it to LLVM instead of the host's), else the host's."""
    if _numba_config.CPU_FEATURES is not None:
        return {f[1:] for f in _numba_config.CPU_FEATURES.split(",") if f.startswith("+")}
    return {name for name, on in _llvm.get_host_cpu_features().items() if on}


def choose_vector_bits(environ=None, features=None) -> int:
    """The kernels' vector width in bits: ``VNUMBA_SIMD_BITS`` when set (128, 256 or 512),
    else the widest the target has (512 with AVX-512F, 256 with AVX2 and FMA, else 128).

    Raises
    ------
    ValueError
        ``VNUMBA_SIMD_BITS`` is set to anything else (one line naming the variable).
    """
    environ = os.environ if environ is None else environ
    forced = environ.get(ENV_VAR, "").strip()
    if forced:
        if forced not in {str(w) for w in WIDTHS}:
            raise ValueError(f"{ENV_VAR}={forced!r}: expected one of {', '.join(map(str, WIDTHS))}")
        return int(forced)
    features = target_features() if features is None else features
    if "avx512f" in features:
        return 512
    if "avx2" in features and "fma" in features:
        return 256
    return 128


try:
    VECTOR_BITS = choose_vector_bits()
except ValueError as _e:  # read at import, before any command's main: one line, not a traceback
    raise SystemExit(f"error: environment variable {_e}") from None
VECTOR_BYTES = VECTOR_BITS // 8
# in-register table look-ups (vlookup64) compile to AVX-512 permutes only with 512-bit vectors
# on a target that has them; elsewhere to one scalar load per lane (correct, slow: callers
# then keep their scalar loops, fused.RBF_LOOKUP)
PERMUTE_LOOKUP = VECTOR_BITS == 512 and "avx512f" in target_features()


def describe() -> str:
    """One line: the kernels' vector width, whether it was forced, and the target CPU."""
    forced = os.environ.get(ENV_VAR, "").strip()
    widest = choose_vector_bits(environ={})
    return (f"kernels use {VECTOR_BITS}-bit vectors ({VECTOR_BYTES // 4} float32 lanes"
            f"{f', forced by {ENV_VAR}' if forced else ''}); target "
            f"{_numba_config.CPU_NAME or _llvm.get_host_cpu_name()}, widest {widest}-bit")


class _WidthKeyedCache(caching.FunctionCache):
    """Numba's function cache with the vector width in every index key, so that code
    compiled for one width is never loaded by a process that uses another."""

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), ("vnumba-simd-bits", VECTOR_BITS))


def jit(**options):
    """``numba.njit(cache=True, **options)`` for kernels built on these vectors: the cache
    entries are keyed by :data:`VECTOR_BITS` as well (:class:`_WidthKeyedCache`)."""
    if "cache" in options:
        raise TypeError("simd.jit always caches (keyed by the vector width); do not pass cache")

    def decorate(fn):
        disp = numba.njit(cache=False, **options)(fn)
        # what Dispatcher.enable_caching does, with the width-keyed cache
        disp._cache = _WidthKeyedCache(disp.py_func)
        return disp
    return decorate


class Vec(types.Type):
    """One SIMD vector of ``lanes`` values of the Numba float type ``dtype``."""

    def __init__(self, dtype, lanes):
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"Vec({dtype} x {lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elem = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elem, fe_type.lanes))


def _n_lanes(dtype, nbytes=None):
    if not isinstance(dtype, types.Float):
        raise TypeError(f"SIMD vectors hold float32 or float64, not {dtype}")
    return (VECTOR_BYTES if nbytes is None else nbytes) // (dtype.bitwidth // 8)


def _vec_of(dtype, nbytes=None):
    return Vec(dtype, _n_lanes(dtype, nbytes))


def _splat(builder, x, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vty.count), [0] * vty.count)
    return builder.shuffle_vector(v, v, mask)


def _element_ptr(context, builder, arrty, arr, idxty, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [context.cast(builder, idx, idxty, types.intp)])


def _check_row(row, floats=True):
    if not (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C"):
        raise TypeError(f"expected a 1-D C-contiguous array, got {row}")
    if floats:
        _n_lanes(row.dtype)


def _constructors(nbytes):
    """The intrinsics that make vectors of ``nbytes`` bytes: ``lanes``, ``vsplat``, ``vbcast``,
    ``vload``, ``vload_head``, ``vtailmask`` (``nbytes=None``: the kernels' width)."""

    @intrinsic
    def lanes(typingctx, arr):
        n = _n_lanes(arr.dtype, nbytes)

        def codegen(context, builder, sig, args):
            return context.get_constant(types.intp, n)
        return types.intp(arr), codegen

    @intrinsic
    def vsplat(typingctx, x):
        vt = _vec_of(x, nbytes)

        def codegen(context, builder, sig, args):
            return _splat(builder, args[0], context.get_value_type(vt))
        return vt(x), codegen

    @intrinsic
    def vbcast(typingctx, arr, i):
        _check_row(arr)
        vt = _vec_of(arr.dtype, nbytes)

        def codegen(context, builder, sig, args):
            x = builder.load(_element_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1]))
            return _splat(builder, x, context.get_value_type(vt))
        return vt(arr, i), codegen

    @intrinsic
    def vload(typingctx, row, i):
        _check_row(row)
        vt = _vec_of(row.dtype, nbytes)

        def codegen(context, builder, sig, args):
            ptr = _element_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            vty = context.get_value_type(vt)
            return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=row.dtype.bitwidth // 8)
        return vt(row, i), codegen

    @intrinsic
    def vload_head(typingctx, row, i, n):
        """Lanes ``k < n`` get ``row[i + k]``, the others 0; only ``row[i .. i + n - 1]`` is
        read (the end of a row that does not fill a vector).  Needs ``n >= 1``."""
        _check_row(row)
        vt = _vec_of(row.dtype, nbytes)

        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            i0 = context.cast(builder, args[1], sig.args[1], types.intp)
            cnt = context.cast(builder, args[2], sig.args[2], types.intp)
            vty = context.get_value_type(vt)
            zero = ir.Constant(vty.element, 0.0)
            v = ir.Constant(vty, [0.0] * vt.lanes)
            for k in range(vt.lanes):
                kk = ir.Constant(i0.type, k)
                inside = builder.icmp_signed("<", kk, cnt)
                # a lane past the end reads row[i] instead (always in bounds) and is then zeroed
                idx = builder.select(inside, builder.add(i0, kk), i0)
                x = builder.select(inside, builder.load(builder.gep(data, [idx])), zero)
                v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), k))
            return v
        return vt(row, i, n), codegen

    @intrinsic
    def vtailmask(typingctx, x, n):
        """A vector of the dtype of the scalar ``x``: 1 in the last ``n`` lanes, 0 before them
        (selects the lanes of a row's last, overlapping vector that are not counted yet)."""
        vt = _vec_of(x, nbytes)

        def codegen(context, builder, sig, args):
            vty = context.get_value_type(vt)
            cnt = context.cast(builder, args[1], sig.args[1], types.intp)
            first = builder.sub(ir.Constant(cnt.type, vt.lanes), cnt)
            one = ir.Constant(vty.element, 1.0)
            zero = ir.Constant(vty.element, 0.0)
            v = ir.Constant(vty, [0.0] * vt.lanes)
            for k in range(vt.lanes):
                keep = builder.icmp_signed(">=", ir.Constant(cnt.type, k), first)
                v = builder.insert_element(v, builder.select(keep, one, zero), ir.Constant(ir.IntType(32), k))
            return v
        return vt(x, n), codegen

    return lanes, vsplat, vbcast, vload, vload_head, vtailmask


# vectors of the kernels' width, and canonical (256-bit) ones for width-independent sums
lanes, vsplat, vbcast, vload, vload_head, vtailmask = _constructors(None)
wlanes, wsplat, _wbcast, wload, wload_head, wtailmask = _constructors(CANONICAL_BYTES)


@intrinsic
def vlanes(typingctx, v):
    """Number of lanes of the vector ``v`` (compile-time constant)."""
    if not isinstance(v, Vec):
        raise TypeError(f"vlanes needs a vector, got {v}")

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, v.lanes)
    return types.intp(v), codegen


@intrinsic
def vstore(typingctx, row, i, v):
    _check_row(row)
    if not (isinstance(v, Vec) and v.dtype == row.dtype):
        raise TypeError(f"cannot store {v} into an array of {row.dtype}")

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        vty = context.get_value_type(v)
        builder.store(args[2], builder.bitcast(ptr, vty.as_pointer()), align=row.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(row, i, v), codegen


def _fma_call(builder, args, llty, suffix):
    fnty = ir.FunctionType(llty, [llty] * 3)
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.{suffix}")
    return builder.call(fn, list(args))


@intrinsic
def vfma(typingctx, a, b, c):
    if not (isinstance(a, Vec) and a == b == c):
        raise TypeError(f"vfma needs three vectors of one type, got {a}, {b}, {c}")

    def codegen(context, builder, sig, args):
        return _fma_call(builder, args, context.get_value_type(a),
                         f"v{a.lanes}f{a.dtype.bitwidth}")
    return a(a, b, c), codegen


@intrinsic
def sfma(typingctx, a, b, c):
    if not (isinstance(a, types.Float) and a == b == c):
        raise TypeError(f"sfma needs three floats of one type, got {a}, {b}, {c}")

    def codegen(context, builder, sig, args):
        return _fma_call(builder, args, context.get_value_type(a), f"f{a.bitwidth}")
    return a(a, b, c), codegen


@intrinsic
def load(typingctx, arr, i):
    """``arr[i]`` of a 1-D contiguous array without the negative-index wrap-around that
    Numba adds to a signed index (a compare and a select per load in a gather loop)."""
    _check_row(arr, floats=False)

    def codegen(context, builder, sig, args):
        return builder.load(_element_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1]))
    return arr.dtype(arr, i), codegen


@intrinsic
def vsum(typingctx, v):
    """Sum of the lanes (pairwise: halves added until one lane is left), in the lane type."""
    if not isinstance(v, Vec):
        raise TypeError(f"vsum needs a vector, got {v}")

    def codegen(context, builder, sig, args):
        x = args[0]
        n = v.lanes
        while n > 1:
            h = n // 2
            lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(ir.IntType(32), h), list(range(h))))
            hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(ir.IntType(32), h), list(range(h, n))))
            x = builder.fadd(lo, hi)
            n = h
        return builder.extract_element(x, ir.Constant(ir.IntType(32), 0))
    return v.dtype(v), codegen


@intrinsic
def vmul(typingctx, a, b):
    """``a * b`` lane by lane."""
    if not (isinstance(a, Vec) and a == b):
        raise TypeError(f"vmul needs two vectors of one type, got {a}, {b}")

    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1])
    return a(a, b), codegen


def _binary(op_name):
    def impl(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b):
            raise TypeError(f"{op_name} needs two vectors of one type, got {a}, {b}")

        def codegen(context, builder, sig, args):
            return getattr(builder, op_name)(args[0], args[1])
        return a(a, b), codegen
    return impl


vadd = intrinsic(_binary("fadd"))
vadd.__doc__ = "``a + b`` lane by lane."
vsub = intrinsic(_binary("fsub"))
vsub.__doc__ = "``a - b`` lane by lane."
vdiv = intrinsic(_binary("fdiv"))
vdiv.__doc__ = "``a / b`` lane by lane (IEEE division)."


@intrinsic
def vcells(typingctx, row, i, off, like):
    """int32 lanes ``row[i + k] - off`` of a 1-D contiguous int32 ``row``, as many as a vector
    of the float array ``like`` has (the cell indices of :func:`vlookup64`)."""
    _check_row(row, floats=False)
    _check_row(like)
    if row.dtype != types.int32:
        raise TypeError(f"vcells reads an int32 row, got {row}")
    n = _n_lanes(like.dtype)
    vt = Vec(types.int32, n)

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        ity = ir.VectorType(ir.IntType(32), n)
        v = builder.load(builder.bitcast(ptr, ity.as_pointer()), align=4)
        o = context.cast(builder, args[2], sig.args[2], types.int32)
        return builder.sub(v, _splat(builder, o, ity))
    return vt(row, i, off, like), codegen


@intrinsic
def vlookup64(typingctx, tab, base, idx):
    """Lane k: ``tab[base + idx[k]]``, for int32 cell indices ``0 <= idx[k] < 64`` (from
    :func:`vcells`) into the 64 values ``tab[base : base + 64]`` of a 1-D contiguous float
    array: a table look-up in registers.

    With 512-bit vectors on AVX-512 the table is four (float32) or eight (float64) vectors
    and a look-up is two or four two-source permutes (``vpermi2ps``/``pd``: 32 or 16 entries
    each) and a select tree on the index's high bits: no gather instruction (gathers measured
    slower than scalar loads on both AVX2 and AVX-512 hosts here).  Elsewhere one scalar load
    per lane.  Either way the lane's value is exactly ``tab[base + idx[k]]``.
    """
    _check_row(tab)
    if not (isinstance(idx, Vec) and idx.dtype == types.int32 and idx.lanes == _n_lanes(tab.dtype)):
        raise TypeError(f"vlookup64 needs int32 lanes from vcells for {tab}, got {idx}")
    vt = _vec_of(tab.dtype)
    n = vt.lanes
    permute = PERMUTE_LOOKUP and n * tab.dtype.bitwidth == 512

    def codegen(context, builder, sig, args):
        fty = context.get_value_type(vt)
        ptr = _element_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        iv = args[2]
        if not permute:
            v = ir.Constant(fty, ir.Undefined)
            for k in range(n):
                j = builder.sext(builder.extract_element(iv, ir.Constant(ir.IntType(32), k)), ir.IntType(64))
                v = builder.insert_element(v, builder.load(builder.gep(ptr, [j])), ir.Constant(ir.IntType(32), k))
            return v
        wide = tab.dtype.bitwidth == 64
        ity = ir.VectorType(ir.IntType(64 if wide else 32), n)
        if wide:
            iv = builder.sext(iv, ity)
        vp = builder.bitcast(ptr, fty.as_pointer())
        parts = [builder.load(builder.gep(vp, [ir.Constant(ir.IntType(64), j)]), align=tab.dtype.bitwidth // 8)
                 for j in range(64 // n)]
        name = "llvm.x86.avx512.vpermi2var." + ("pd" if wide else "ps") + ".512"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fty, [fty, ity, fty]), name)
        # each permute picks from 2n entries by the index's low bits; higher bits choose the pair
        level = [builder.call(fn, [parts[j], iv, parts[j + 1]]) for j in range(0, len(parts), 2)]
        bit = 2 * n
        zero = ir.Constant(ity, [0] * n)
        while len(level) > 1:
            hi = builder.icmp_unsigned("!=", builder.and_(iv, ir.Constant(ity, [bit] * n)), zero)
            level = [builder.select(hi, level[j + 1], level[j]) for j in range(0, len(level), 2)]
            bit *= 2
        return level[0]
    return vt(tab, base, idx), codegen


@intrinsic
def vneg(typingctx, a):
    """``-a`` lane by lane (sign flip; ``0 - a`` would turn -0 into +0)."""
    if not isinstance(a, Vec):
        raise TypeError(f"vneg needs a vector, got {a}")

    def codegen(context, builder, sig, args):
        return builder.fneg(args[0])
    return a(a), codegen


def _floor_call(builder, x, llty, suffix):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(llty, [llty]),
                                        f"llvm.floor.{suffix}")
    return builder.call(fn, [x])


@intrinsic
def vfloor(typingctx, a):
    """``floor(a)`` lane by lane."""
    if not isinstance(a, Vec):
        raise TypeError(f"vfloor needs a vector, got {a}")

    def codegen(context, builder, sig, args):
        return _floor_call(builder, args[0], context.get_value_type(a), f"v{a.lanes}f{a.dtype.bitwidth}")
    return a(a), codegen


@intrinsic
def sfloor(typingctx, a):
    """``floor(a)`` of a scalar in its own dtype (``np.floor`` of a float32 scalar is float64
    in Numba)."""
    if not isinstance(a, types.Float):
        raise TypeError(f"sfloor needs a float, got {a}")

    def codegen(context, builder, sig, args):
        return _floor_call(builder, args[0], context.get_value_type(a), f"f{a.bitwidth}")
    return a(a), codegen


@intrinsic
def vwhere_between(typingctx, x, lo, hi, a, b):
    """Lanes with ``lo <= x <= hi`` (scalars ``lo``, ``hi``) take ``a``, the others ``b``;
    a NaN lane of ``x`` takes ``b``."""
    if not (isinstance(x, Vec) and x == a == b and lo == hi == x.dtype):
        raise TypeError(f"vwhere_between needs vectors and bounds of one type, got "
                        f"{x}, {lo}, {hi}, {a}, {b}")

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(x)
        ge = builder.fcmp_ordered(">=", args[0], _splat(builder, args[1], vty))
        le = builder.fcmp_ordered("<=", args[0], _splat(builder, args[2], vty))
        return builder.select(builder.and_(ge, le), args[3], args[4])
    return a(x, lo, hi, a, b), codegen


@intrinsic
def vstore_index(typingctx, row, i, v, offset):
    """``row[i:i + lanes] = int32(v) + offset`` for a vector ``v`` of integral values and a
    1-D contiguous int32 ``row``."""
    _check_row(row, floats=False)
    if row.dtype != types.int32 or not isinstance(v, Vec):
        raise TypeError(f"vstore_index stores a vector into int32, got {row}, {v}")

    def codegen(context, builder, sig, args):
        ity = ir.VectorType(ir.IntType(32), v.lanes)
        k = builder.fptosi(args[2], ity)
        off = context.cast(builder, args[3], sig.args[3], types.int32)
        k = builder.add(k, _splat(builder, off, ity))
        ptr = _element_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        builder.store(k, builder.bitcast(ptr, ity.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(row, i, v, offset), codegen
