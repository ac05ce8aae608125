"""Argument normalisation shared by the public functions.

Everything here turns what the caller passed into what ``_core`` takes: float32/float64 arrays
(16-bit logits as their uint16 bits, with a format code), the class axis as an (outer, classes,
inner) view with element strides, int64 index targets, and validated options. Every check of SPEC's
error table that does not need to look at every element is made here, before any output is written;
target values are checked by ``_core``, also before writing.
"""

from __future__ import annotations

import math
import operator
import sys
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from . import _core

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
SOFTMAX_OPS = {"log_softmax": 0, "softmax": 1, "logsumexp": 2}

_FLOAT16 = np.dtype(np.float16)
_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_INT64 = np.dtype(np.int64)
_UINT16 = np.dtype(np.uint16)

View = Tuple[int, int, int, int, int, int, int]  # _core.ClassAxisView, see _core.pyi


def _bfloat16() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError(
            "bfloat16 logits need the ml_dtypes package for their NumPy dtype (pip install ml_dtypes)"
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


_known_bfloat16: Optional[np.dtype] = None


def is_bfloat16(dtype: np.dtype) -> bool:
    """ml_dtypes' bfloat16 (recognised by name: ml_dtypes is optional and imported only when needed).
    The dtype found is kept: forming a dtype's name takes microseconds."""
    global _known_bfloat16
    if dtype is _known_bfloat16:
        return True
    if dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16":
        _known_bfloat16 = dtype
        return True
    return False


def numpy_view(value: Any) -> Any:
    """``value`` itself, or for a torch CPU tensor without grad or the negative bit, a NumPy view
    that shares its memory: ``.numpy()``, or for bfloat16 (which NumPy lacks) its bits as int16 seen
    as ml_dtypes' bfloat16. About 1 us, where a DLPack export takes 5-7 (torch's ``__dlpack__``), and
    it lets the common call take its short path. Any other tensor goes on to DLPack, which reads it
    or says why not. What would make ``.numpy()`` raise is looked at first where it is cheap to:
    torch's exception takes about 20 us."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor) and not value.requires_grad and value.is_cpu:
        try:
            if value.dtype is torch.bfloat16:
                return value.view(torch.int16).numpy().view(_bfloat16())
            return value.numpy()
        except (RuntimeError, TypeError):
            pass  # the negative bit, a dtype NumPy lacks, bfloat16 without ml_dtypes
    return value


def _foreign(x: Any) -> Optional[np.ndarray]:
    """A NumPy view of another library's CPU array (a torch tensor, a JAX array): ``numpy_view``'s,
    else through DLPack; None when ``x`` offers neither."""
    if isinstance(x, np.ndarray) or not hasattr(type(x), "__dlpack__"):
        return None
    view = numpy_view(x)
    if type(view) is np.ndarray:
        return view
    is_neg = getattr(x, "is_neg", None)
    if is_neg is not None and is_neg():
        # A torch view with the negative bit set (the imaginary part of a conjugate) holds its
        # values un-negated in memory, and DLPack exports that memory as it is.
        x = x.resolve_neg()
    array, fmt = _core.from_dlpack(x.__dlpack__())
    return array.view(_bfloat16()) if fmt == "bfloat16" else array


def logits(x: Any, name: str = "input") -> Tuple[np.ndarray, np.dtype]:
    """Returns ``(array to compute on, dtype of the results)``: float16 and bfloat16 arrays are read
    as they are (the kernels compute on them in float32; see ``core_array``). A CPU tensor of another
    library is viewed without a copy (see ``_foreign``)."""
    array = x if type(x) is np.ndarray else _foreign(x)
    if array is None:
        array = np.asarray(x)
    dtype = array.dtype
    if not dtype.isnative:
        dtype = dtype.newbyteorder("=")
        array = array.astype(dtype)
    if not (dtype == _FLOAT32 or dtype == _FLOAT64 or dtype == _FLOAT16 or is_bfloat16(dtype)):
        raise TypeError(
            f"{name} must be an array of float16, bfloat16, float32 or float64 values, got dtype {dtype}"
        )
    if array.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the class axis), got a 0-d array")
    return array, dtype


def real_array(value: Any) -> np.ndarray:
    """``value`` as a NumPy array, for the arguments read as numbers besides the logits (weights,
    targets, grad_output), with bfloat16 widened to float32 (exactly), so that it passes as a float
    dtype. A tensor NumPy cannot convert (torch's bfloat16, or a view with the negative bit) is read
    through DLPack, as logits are."""
    if type(value) is np.ndarray:
        array = value
    else:
        try:
            array = np.asarray(value)
        except (TypeError, RuntimeError):
            array = _foreign(value)
            if array is None:
                raise
    if array.dtype.kind == "V" and is_bfloat16(array.dtype):
        array = array.astype(_FLOAT32)
    return array


def beyond_int64(array: np.ndarray) -> bool:
    """Whether an integer array holds a value that int64 cannot (uint64 above its range)."""
    return array.dtype == np.dtype(np.uint64) and array.size > 0 and array.max() > np.iinfo(np.int64).max


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the kernels compute in: float32 for 16-bit logits."""
    return _FLOAT32 if dtype.itemsize == 2 else dtype


def half_code(dtype: np.dtype) -> int:
    """``_core``'s code for 16-bit floats: 0 float16, 1 bfloat16, -1 for anything else."""
    if dtype.itemsize != 2:
        return -1
    if dtype == _FLOAT16:
        return 0
    return 1 if is_bfloat16(dtype) else -1


def core_array(array: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """``array`` as ``_core`` takes it: 16-bit floats as their bits (uint16), without a copy."""
    if array is None or array.dtype.itemsize != 2:
        return array
    return array.view(_UINT16)


def integer(value: Any, name: str, error: type = TypeError) -> int:
    """``value`` as an int: a Python or NumPy integer (anything with ``__index__``), but not a bool;
    otherwise ``error`` saying that ``name`` must be an integer."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise error(f"{name} must be an integer, got {value!r}")


def class_axis(ndim: int, axis: Any, pytorch_default: bool) -> int:
    """The class axis in [0, ndim). ``None`` means PyTorch's convention when ``pytorch_default``."""
    if axis is None:
        if not pytorch_default:
            raise ValueError("axis must be an integer, got None")
        return 0 if ndim == 1 else 1
    index = integer(axis, "axis", ValueError)
    if not -ndim <= index < ndim:
        raise ValueError(f"axis {index} is out of bounds for an array of dimension {ndim}")
    return index % ndim


def class_view(array: np.ndarray, axis: int) -> Tuple[np.ndarray, View]:
    """Sees ``array`` as (outer, classes, inner) with element strides, without a copy when the
    inner axes are C-contiguous and the outer axes collapse to one stride, or, for rows of more than
    ``_core.TILE_CLASSES`` classes along the last axis, to two (rows in blocks, as ``x[:, :-1]`` of
    ``(batch, seq, vocab)`` logits); otherwise copies once."""
    shape = array.shape
    classes = shape[axis]
    outer = 1
    for extent in shape[:axis]:
        outer *= extent
    inner = 1
    for extent in shape[axis + 1 :]:
        inner *= extent
    if array.flags.c_contiguous:
        return array, (outer, classes, inner, classes * inner, inner, 0, 0)
    view = _strided_view(array, axis, classes, outer, inner)
    if view is None:
        array = np.ascontiguousarray(array)
        view = (outer, classes, inner, classes * inner, inner, 0, 0)
    return array, view


def _strided_view(array: np.ndarray, axis: int, classes: int, outer: int, inner: int) -> Optional[View]:
    shape, strides, item = array.shape, array.strides, array.itemsize
    if array.size == 0:
        return (outer, classes, inner, classes * inner, inner, 0, 0)
    if any(stride % item for stride in strides):
        return None
    expected = item
    for dim in range(array.ndim - 1, axis, -1):
        if shape[dim] != 1 and strides[dim] != expected:
            return None
        expected *= shape[dim]
    if classes == 1:
        class_stride = inner
    else:
        class_stride = strides[axis] // item
        if inner == 1 and class_stride != 1:
            return None
    # The outer axes, innermost first, merged into levels of [stride, positions] where they collapse.
    levels: list = []
    for dim in range(axis - 1, -1, -1):
        if shape[dim] == 1:
            continue
        stride = strides[dim] // item
        if levels and stride == levels[-1][0] * levels[-1][1]:
            levels[-1][1] *= shape[dim]
        else:
            levels.append([stride, shape[dim]])
    if not levels:
        return (outer, classes, inner, classes * inner, class_stride, 0, 0)
    if len(levels) == 1:
        return (outer, classes, inner, levels[0][0], class_stride, 0, 0)
    if len(levels) == 2 and inner == 1 and classes > _core.TILE_CLASSES:
        return (outer, classes, inner, levels[0][0], class_stride, levels[0][1], levels[1][0])
    return None


def reduction_code(reduction: Any) -> int:
    code = REDUCTIONS.get(reduction) if isinstance(reduction, str) else None
    if code is None:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return code


def _option_number(value: Any, name: str, requirement: str) -> float:
    """A numeric option as a float: a Python or NumPy int or float, or a 0-d real array (not a bool, a
    string or a sequence, which raise ``ValueError`` saying what ``name`` must be)."""
    number = value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value
    if not isinstance(number, (bool, np.bool_)) and isinstance(number, (int, float, np.integer, np.floating)):
        try:
            return float(number)
        except OverflowError:  # a Python int beyond float's range
            pass
    raise ValueError(f"{name} must be {requirement}, got {value!r}")


def smoothing(label_smoothing: Any) -> float:
    value = _option_number(label_smoothing, "label_smoothing", "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"label_smoothing must be in [0, 1], got {value}")
    return value


def z_loss(value: Any) -> float:
    number = _option_number(value, "z_loss", "a finite number >= 0")
    if not 0.0 <= number < math.inf:  # also rejects NaN
        raise ValueError(f"z_loss must be a finite number >= 0, got {number}")
    return number


def softcap(value: Any) -> float:
    """The soft cap as ``_core`` takes it: 0.0 for ``None``."""
    if value is None:
        return 0.0
    number = _option_number(value, "softcap", "None or a finite number > 0")
    if not 0.0 < number < math.inf:  # also rejects NaN
        raise ValueError(f"softcap must be None or a finite number > 0, got {number}")
    return number


def ignore(ignore_index: Any) -> int:
    value = integer(ignore_index, "ignore_index")
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"ignore_index must fit in int64, got {value}")
    return value


def class_weight(weight: Any, classes: int, dtype: np.dtype) -> Optional[np.ndarray]:
    if weight is None:
        return None
    array = real_array(weight)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"weight must be an array of real numbers, got dtype {array.dtype}")
    if array.ndim != 1 or array.shape[0] != classes:
        raise ValueError(f"weight must be a 1-D array of length {classes} (the number of classes), got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype)


class Targets(NamedTuple):
    index: Optional[np.ndarray]  # int64, C-contiguous, the row shape
    probability: Optional[np.ndarray]  # the compute dtype, C-contiguous, the input's shape


def targets(target: Any, dtype: np.dtype, axis: int, original_shape: Tuple[int, ...]) -> Targets:
    """Class indices as int64, or class probabilities in ``dtype`` (the dtype the kernels compute in)."""
    array = real_array(target)
    kind = array.dtype.kind
    row_shape = original_shape[:axis] + original_shape[axis + 1 :]
    if array.dtype == _INT64 and array.shape == row_shape and array.flags.c_contiguous:
        return Targets(array, None)
    if kind in "iu":
        shape = array.shape
        if len(original_shape) == 1 and shape == (1,):
            array = array.reshape(())
        elif shape != row_shape:
            raise ValueError(
                f"target shape {shape} does not match input shape {original_shape}: class indices need "
                f"shape {row_shape} (the input's shape without the class axis {axis})"
            )
        if beyond_int64(array):
            raise IndexError(f"target {array.max()} is out of bounds for {original_shape[axis]} classes")
        return Targets(np.ascontiguousarray(array, dtype=np.int64), None)
    if kind == "f":
        if array.shape != original_shape:
            raise ValueError(
                f"target shape {array.shape} does not match input shape {original_shape}: class "
                f"probabilities need the input's shape"
            )
        return Targets(None, np.ascontiguousarray(array, dtype=dtype))
    raise TypeError(
        f"target must hold class indices (an integer dtype) or class probabilities (a float dtype), got dtype {array.dtype}"
    )


def output(
    out: Any,
    shape: Tuple[int, ...],
    dtype: np.dtype,
    inputs: Tuple[Any, ...],
    in_place: Any = None,
    also: Optional[np.dtype] = None,
) -> np.ndarray:
    """Checks an ``out=`` array: C-contiguous, writeable, exactly ``shape`` and ``dtype`` (or ``also``), and not
    overlapping any input, except that it may view exactly the elements of ``in_place`` (the logits'
    array, which for a torch tensor is its NumPy or DLPack view): every kernel reads an element, or its row's
    statistics, before it writes the same element."""
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    if out.dtype != dtype and (also is None or out.dtype != also):
        expected = f"{dtype} or {also}" if also is not None else f"{dtype}"
        raise ValueError(f"out has dtype {out.dtype}, expected {expected}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    for array in inputs:
        if not isinstance(array, np.ndarray) or not np.may_share_memory(out, array):
            continue
        if array is in_place and _same_elements(out, array):
            continue
        raise ValueError(
            "out must not overlap an input array (it may only be exactly the logits array, for an "
            "in-place result)"
        )
    return out


def _same_elements(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays view exactly the same elements in the same order (the stride of an axis of
    extent 1 addresses nothing and may differ)."""
    return (
        a.shape == b.shape
        and all(x == y or n == 1 for n, x, y in zip(a.shape, a.strides, b.strides))
        and a.dtype == b.dtype
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def grad_rows(grad_output: Any, code: int, row_shape: Tuple[int, ...], dtype: np.dtype) -> Tuple[float, Optional[np.ndarray]]:
    """``grad_output`` as (scalar, per-row array or None); a Python int is a scalar, one beyond
    float's range a ``ValueError``."""
    if type(grad_output) is int:
        try:
            return float(grad_output), None
        except OverflowError:
            bits = grad_output.bit_length()
            raise ValueError(f"grad_output must be within float's range, got an int of {bits} bits") from None
    array = real_array(grad_output)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"grad_output must be real, got dtype {array.dtype}")
    if array.ndim == 0:
        return float(array), None
    if code != REDUCTIONS["none"]:
        raise ValueError(f"grad_output must be a scalar for a reduced loss, got shape {array.shape}")
    if array.shape != row_shape:
        raise ValueError(f"grad_output has shape {array.shape}, expected a scalar or the loss shape {row_shape}")
    return 1.0, np.ascontiguousarray(array, dtype=dtype)


def new_result(shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous result array; one of ``_core.OWN_RESULT_BYTES`` or more comes
    from ``_core.empty``: on a 64-byte line (for the kernels' streaming stores), and from
    ``_core.KEPT_RESULT_BYTES`` up in the memory of the last such result freed (result_memory.h)."""
    nbytes = dtype.itemsize
    for extent in shape:
        nbytes *= extent
    return _core.empty(shape, dtype) if nbytes >= _core.OWN_RESULT_BYTES else np.empty(shape, dtype)


# The largest finite float16, the narrowest result dtype: a value within it fits every result dtype.
SMALLEST_MAX = 65504.0


def scalar(value: float, dtype: np.dtype) -> Any:
    """``value`` as a NumPy scalar of ``dtype``. Beyond the dtype's range it rounds to an infinity,
    as IEEE arithmetic does and as PyTorch returns it, without NumPy's overflow warning."""
    if -SMALLEST_MAX <= value <= SMALLEST_MAX:
        return dtype.type(value)
    with np.errstate(over="ignore"):
        return dtype.type(value)


def cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``array`` in ``dtype`` (itself when it has it), values beyond the dtype's range rounded to
    infinities without NumPy's overflow warning. float32 to a 16-bit dtype is ``_core.narrow``: the
    same rounding as NumPy's cast, vectorised and spread over threads."""
    if array.dtype == dtype:
        return array
    if array.dtype == _FLOAT32 and dtype.itemsize == 2 and array.flags.c_contiguous:
        return _core.narrow(array, dtype, half_code(dtype))
    with np.errstate(over="ignore"):
        return array.astype(dtype)


def reduce(total: float, denominator: float, code: int, dtype: np.dtype) -> Any:
    """The reduced loss as a NumPy scalar of ``dtype``; ``mean`` divides in float64, and is NaN for a
    zero denominator (SPEC's D = 0: an empty or fully ignored batch, or kept rows whose classes all
    weigh 0, where PyTorch's unsmoothed part is 0 / 0), whatever the smoothing or z-loss added."""
    if code == 1:  # mean
        total = total / denominator if denominator != 0.0 else math.nan
    return scalar(total, dtype)
