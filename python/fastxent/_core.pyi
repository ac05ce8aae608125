# Stubs of the compiled module fastxent._core (csrc/bindings/*.cpp). Private: the public API is the
# fastxent package, which normalises every argument before calling these.
#
# view: (outer, classes, inner, outer_stride, class_stride, block_rows, block_stride), element strides
# of the class-axis view; block_rows 0, or rows in blocks (inner 1, more than TILE_CLASSES classes):
# row r at (r // block_rows) * block_stride + (r % block_rows) * outer_stride.
# Output arrays are C-contiguous, writeable and of the documented size; they are filled in place.
# half: 16-bit logits handed over as their bits (a uint16 array): 0 float16, 1 bfloat16, -1 none.
# They are computed in float32: every other float array of the call is then float32, except the
# outputs of the logits' size (out=, grad), which may be uint16 in the same 16-bit format, and
# score_spans' span_logprob, float64 whatever the logits.

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

View = Tuple[int, int, int, int, int, int, int]
TILE_CLASSES: int

# register_runtime.cpp
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def cpu_info() -> Dict[str, Any]: ...

# Large results (result_memory.h): an uninitialised C-contiguous array, on a 64-byte line when it
# holds OWN_RESULT_BYTES or more, in the kept block when it holds KEPT_RESULT_BYTES or more;
# release_memory frees the kept block and returns its size.
KEPT_RESULT_BYTES: int
OWN_RESULT_BYTES: int
def empty(shape: Sequence[int], dtype: np.dtype) -> np.ndarray: ...
def release_memory() -> int: ...
# values (float32, C-contiguous) rounded to dtype, 16-bit floats (half: 0 float16, 1 bfloat16): a new
# array of values' shape.
def narrow(values: np.ndarray, dtype: np.dtype, half: int) -> np.ndarray: ...

# register_softmax.cpp. op: 0 log_softmax, 1 softmax, 2 logsumexp. softmax_fast: the common call
# (class axis -1 or in [0, ndim); out None or, for ops 0 and 1, a valid out= of the input's dtype)
# on a C-contiguous float32, float64, float16 or bfloat16 array (16-bit: at least one class), with a
# result of its dtype (out itself when given); or None.
def softmax_fast(input: Any, op: int, axis: int, out: Optional[np.ndarray] = None) -> Optional[np.ndarray]: ...
def softmax(input: np.ndarray, view: View, op: int, out: np.ndarray, half: int = -1) -> None: ...

# register_loss.cpp. The common call's fast path (reduction: 0 none, 1 mean, 2 sum): the mean or the
# sum as a float, the row losses as a new array ("none"), or None when the arguments need the Python
# layer (anything but a C-contiguous (N, C) or (N, C, d1, ...) float32, float64, float16 or bfloat16
# array, classes along axis 1, and (N,) or (N, d1, ...) targets of a signed integer dtype or an
# unsigned one of up to 32 bits, and weight None or a
# C-contiguous (C,) array of the computed dtype: float64 for float64 input, else float32). Results
# have input's dtype.
def cross_entropy_fast(
    input: Any, target: Any, ignore_index: int, reduction: int, weight: Any = None
) -> Union[float, np.ndarray, None]: ...

# The same for the other common calls: the loss (with_loss), the gradient times grad_output
# (with_grad; into out, or a new array like input), or (loss, gradient); save_stats / saved_stats as
# cross_entropy's. None also when out needs the Python layer's checks (shape, dtype, layout, overlap).
def cross_entropy_fast_with(
    input: Any,
    target: Any,
    ignore_index: int,
    reduction: int,
    grad_output: float,
    with_loss: bool,
    with_grad: bool,
    out: Any,
    save_stats: Optional[np.ndarray],
    saved_stats: Optional[np.ndarray],
    weight: Any = None,
) -> Union[float, np.ndarray, Tuple[Union[float, np.ndarray], np.ndarray], None]: ...

# register_loss.cpp. reduction: 0 none, 1 mean, 2 sum. Returns (sum of the row losses, denominator of "mean").
def cross_entropy(
    input: np.ndarray,
    view: View,
    target_index: Optional[np.ndarray],
    target_prob: Optional[np.ndarray],
    weight: Optional[np.ndarray],
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    reduction: int,
    grad_output: float,
    grad_rows: Optional[np.ndarray],
    row_loss: Optional[np.ndarray],
    grad: Optional[np.ndarray],
    save_stats: Optional[np.ndarray],
    saved_stats: Optional[np.ndarray],
    want_sum: bool,
    half: int = -1,
    softcap: float = 0.0,  # 0.0: none
) -> Tuple[float, float]: ...
# nll_loss's common call, as cross_entropy_fast (log-probabilities in place of logits).
def nll_loss_fast(
    input: Any, target: Any, ignore_index: int, reduction: int, weight: Any = None
) -> Union[float, np.ndarray, None]: ...
def nll_loss(
    input: np.ndarray,
    view: View,
    target: np.ndarray,
    weight: Optional[np.ndarray],
    ignore_index: int,
    row_loss: Optional[np.ndarray],
    half: int = -1,
) -> Tuple[float, float]: ...

# register_score.cpp. target: int64 (rows, candidates); logprob (input dtype), is_greedy (bool) and
# rank (int64) of rows * candidates entries; lse (input dtype), argmax (int64), entropy (input dtype)
# of rows entries.
def score(
    input: np.ndarray,
    view: View,
    target: np.ndarray,
    candidates: int,
    logprob: np.ndarray,
    is_greedy: np.ndarray,
    rank: np.ndarray,
    lse: np.ndarray,
    argmax: np.ndarray,
    entropy: np.ndarray,
    half: int = -1,
) -> None: ...

# target: int64 (rows); starts, lengths: int64 (spans); span_logprob: float64 (spans); span_greedy: bool (spans).
def score_spans(
    input: np.ndarray,
    view: View,
    target: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    span_logprob: np.ndarray,
    span_greedy: np.ndarray,
    half: int = -1,
) -> None: ...

# register_dlpack.cpp. A consumed DLPack capsule ("dltensor", from obj.__dlpack__()) of a CPU array as
# (NumPy array viewing its memory, format): format is "float32", "float64", "float16", or "bfloat16"
# (the array then holds the bits as uint16).
def from_dlpack(capsule: Any) -> Tuple[np.ndarray, str]: ...
