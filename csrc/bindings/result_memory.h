// Memory for large results (gradients, log_softmax, softmax), kept for the next call.
//
// Note: reusing the memory of large results. A result of more than 32 MiB gets fresh pages from the
// operating system on every call (glibc's malloc maps blocks of that size, and unmaps them when they
// are freed), and the kernel zeroes each page at first touch: about 7 GB/s on the 2-core machine of
// the README's figures, so a 262 MB gradient paid some 23 ms on top of the 63 ms of its computation.
// Such results are therefore allocated here, and when the last array viewing one is freed, its block
// is kept (one block, the most recently freed) for the next result of the same size or up to half as
// large. A training or scoring loop that drops the previous result then writes into memory that is
// already mapped. On Linux the kept block is marked MADV_FREE: under memory pressure the system may
// take its pages back (the next use then faults in zeroed pages again) without waiting for us.
// release_kept_memory() frees it at once (fastxent.release_memory()).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <vector>

#include "core/kernels.h"

namespace fastxent::bindings {

namespace py = pybind11;

// Results at least this large use the kept block (see the Note above).
constexpr std::size_t kKeptResultBytes = std::size_t{32} << 20;
// Results at least this large (kStreamResultBytes, kernels.h) are allocated here, on a 64-byte line,
// so that the kernels may write them by streaming stores (see the Note on streaming stores,
// stream.h); those below kKeptResultBytes are freed with their last array. Smaller ones come from
// NumPy.
constexpr std::size_t kOwnResultBytes = static_cast<std::size_t>(kStreamResultBytes);

// A new uninitialised C-contiguous array of `dtype` and `shape`, on a 64-byte line: in kept or fresh
// memory when it holds kOwnResultBytes or more, else NumPy's own.
py::array new_result(const py::dtype& dtype, const std::vector<py::ssize_t>& shape);

// A new result of `dtype`, a 16-bit float dtype of format `half` (0 float16, 1 bfloat16), holding
// `values` (float32, C-contiguous) rounded to it (KernelTable::float_to_half), in values' shape.
py::array narrowed_result(const py::array& values, const py::dtype& dtype, int half);

template <typename T>
py::array new_result(const std::vector<py::ssize_t>& shape) {
    return new_result(py::dtype::of<T>(), shape);
}

// Frees the kept block, if any; returns its size in bytes (0 for none).
std::size_t release_kept_memory();

}  // namespace fastxent::bindings
