// Turning the arrays handed over by the Python layer into raw pointers, with the checks that make a
// misuse of the private _core module an exception rather than a crash. The Python layer has already
// normalised dtypes, shapes and layouts; nothing here copies.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <vector>

#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/parallel.h"

namespace fastxent::bindings {

namespace py = pybind11;

// (outer, classes, inner, outer_stride, class_stride, block_rows, block_stride) as sent by the Python
// layer (ClassAxisView; block_rows 0 for rows one stride apart).
using ViewTuple = std::array<std::int64_t, 7>;

// The view as the kernels of the chosen instruction set cut it for T (ClassAxisView::tile_classes).
template <typename T>
ClassAxisView tiled_view(ClassAxisView view) {
    const KernelTable& table = kernels();
    view.tile_classes = std::is_same_v<T, float> ? table.tile_classes_float : table.tile_classes_double;
    return view;
}

// The (outer, classes, inner) view of a C-contiguous x along `axis` (the axes before it as the outer
// one, those after it as the rows' inner axis): the view of the common calls, which the Python layer
// would have made (_arguments.class_view).
inline ClassAxisView contiguous_view(const py::array& x, py::ssize_t axis) {
    std::int64_t outer = 1;
    std::int64_t inner = 1;
    for (py::ssize_t d = 0; d < axis; ++d) outer *= x.shape(d);
    for (py::ssize_t d = axis + 1; d < x.ndim(); ++d) inner *= x.shape(d);
    const std::int64_t classes = x.shape(axis);
    return ClassAxisView{outer, classes, inner, classes * inner, inner};
}

// x's shape without `axis` (the shape of a result per row, such as row losses or a logsumexp).
inline std::vector<py::ssize_t> shape_without(const py::array& x, py::ssize_t axis) {
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    shape.erase(shape.begin() + axis);
    return shape;
}

inline ClassAxisView to_view(const ViewTuple& v) {
    if (v[0] < 0 || v[1] < 0 || v[2] < 0) throw std::invalid_argument("negative extent in the class-axis view");
    ClassAxisView view{v[0], v[1], v[2], v[3], v[4]};
    if (v[5] != 0) {
        // Rows in blocks: whole rows only (see ClassAxisView::block_rows).
        if (v[5] < 1 || v[0] % v[5] != 0 || v[2] != 1 || v[1] <= kTileClasses) {
            throw std::invalid_argument("rows in blocks need whole blocks, inner 1 and more than kTileClasses classes");
        }
        view.block_rows = v[5];
        view.block_stride = v[6];
    }
    return view;
}

// An array of exactly T in native byte order (NumPy's "equivalent types", not object identity).
template <typename T>
bool has_dtype(const py::handle& array) {
    return py::isinstance<py::array_t<T>>(array);
}

// The 16-bit format of an array's dtype: 0 float16, 1 bfloat16 (ml_dtypes' dtype, recognised by its
// name, as the Python layer recognises it), -1 for any other dtype or a non-native byte order. The
// bfloat16 dtype found is kept (called with the GIL held; a dtype's name takes microseconds to form).
inline int half_format_of(const py::array& array) {
    static PyObject* bfloat16 = nullptr;  // a reference kept for good: the dtype outlives every call
    const py::dtype dtype = array.dtype();
    if (dtype.itemsize() != 2 || dtype.byteorder() != '=') return -1;
    if (dtype.kind() == 'f') return 0;
    if (dtype.ptr() == bfloat16) return 1;
    if (dtype.kind() != 'V' || bfloat16 != nullptr) return -1;
    if (py::str(dtype.attr("name")).cast<std::string>() != "bfloat16") return -1;
    bfloat16 = dtype.inc_ref().ptr();
    return 1;
}

// `object` as the kernels take 16-bit floats, their bits (uint16): a float16 or bfloat16 array is
// viewed as its bits, without a copy; anything else is returned as it is.
inline py::object as_half_bits(const py::object& object) {
    if (!py::isinstance<py::array>(object) || has_dtype<std::uint16_t>(object)) return object;
    py::array array = py::reinterpret_borrow<py::array>(object);
    return half_format_of(array) >= 0 ? py::object(array.view("uint16")) : object;
}

// A read-only input; null when `object` is None. Strided inputs are allowed (the view says how to walk them).
template <typename T>
const T* input_data(const py::object& object, const char* name) {
    if (object.is_none()) return nullptr;
    if (!py::isinstance<py::array>(object)) throw std::invalid_argument(std::string(name) + " must be an ndarray");
    const py::array array = py::reinterpret_borrow<py::array>(object);
    if (!has_dtype<T>(array)) throw std::invalid_argument(std::string(name) + " has the wrong dtype");
    return static_cast<const T*>(array.data());
}

// A C-contiguous input or output of exactly `size` elements; null when `object` is None.
template <typename T>
T* dense_data(const py::object& object, const char* name, std::int64_t size, bool writeable) {
    if (object.is_none()) return nullptr;
    if (!py::isinstance<py::array>(object)) throw std::invalid_argument(std::string(name) + " must be an ndarray");
    py::array array = py::reinterpret_borrow<py::array>(object);
    if (!has_dtype<T>(array)) throw std::invalid_argument(std::string(name) + " has the wrong dtype");
    if (!(array.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + " must be C-contiguous");
    if (array.size() != size) throw std::invalid_argument(std::string(name) + " has the wrong size");
    if (writeable) {
        if (!array.writeable()) throw std::invalid_argument(std::string(name) + " is read-only");
        return static_cast<T*>(array.mutable_data());
    }
    return const_cast<T*>(static_cast<const T*>(array.data()));
}

// The logits of a problem: T, or (half = 0 float16, 1 bfloat16; -1 for none) 16-bit floats handed
// over as uint16 or in their own dtype, for a float kernel.
template <typename T, typename Problem>
void set_logits(Problem& problem, const py::array& input, int half) {
    if (half < 0) {
        problem.input = input_data<T>(input, "input");
        return;
    }
    if (half > 1) throw std::invalid_argument("unknown 16-bit format code");
    problem.input_half = input_data<std::uint16_t>(as_half_bits(input), "input");
    problem.half_format = static_cast<HalfFormat>(half);
}

// An output of `size` elements that is either T or, for a call on 16-bit logits, 16-bit floats
// (uint16, or an array of their dtype) in the logits' format; null when `object` is None.
template <typename T>
void set_output(const py::object& object, const char* name, std::int64_t size, int half, T*& native,
                std::uint16_t*& half_data) {
    const py::object bits = half >= 0 ? as_half_bits(object) : object;
    if (half >= 0 && !bits.is_none() && has_dtype<std::uint16_t>(bits)) {
        half_data = dense_data<std::uint16_t>(bits, name, size, true);
    } else {
        native = dense_data<T>(object, name, size, true);
    }
}

// Gives a staged problem (16-bit logits or a soft cap) its staging buffers, one per thread the
// kernels may use now (`split`: the kernel splits rows; see staging_size).
template <typename T, typename Problem>
void set_staging(Problem& problem, std::vector<T>& buffer, bool capped, bool split = true) {
    if (problem.input_half == nullptr && !capped) return;
    problem.staging_threads = max_threads();
    buffer.resize(static_cast<std::size_t>(problem.staging_threads) *
                  static_cast<std::size_t>(staging_size(problem.view, capped, split)));
    problem.staging = buffer.data();
}

// Whether two arrays' memory bounds meet, as numpy.may_share_memory sees them (either may be strided,
// even backwards); empty arrays meet nothing.
inline bool bounds_overlap(const py::array& a, const py::array& b) {
    if (a.size() == 0 || b.size() == 0) return false;
    const auto bounds = [](const py::array& array, const char*& first, const char*& last) {
        first = static_cast<const char*>(array.data());
        last = first + array.itemsize();
        for (py::ssize_t d = 0; d < array.ndim(); ++d) {
            (array.strides(d) < 0 ? first : last) += array.strides(d) * (array.shape(d) - 1);
        }
    };
    const char *a_first, *a_last, *b_first, *b_last;
    bounds(a, a_first, a_last);
    bounds(b, b_first, b_last);
    return a_first < b_last && b_first < a_last;
}

// Whether `out` may take, on a common call's fast path, a result of x's shape in `dtype`: a writeable
// C-contiguous array of exactly that shape and dtype that is either x's own elements (an in-place
// result; every kernel reads an element, or its row's statistics, before it writes it) or shares no
// memory with x. Anything else is left to the Python layer, which raises the error.
inline bool usable_out(const py::handle& out, const py::array& x, const py::dtype& dtype) {
    if (!py::isinstance<py::array>(out)) return false;
    const py::array o = py::reinterpret_borrow<py::array>(out);
    if (!o.dtype().equal(dtype) || o.ndim() != x.ndim()) return false;
    for (py::ssize_t d = 0; d < x.ndim(); ++d) {
        if (o.shape(d) != x.shape(d)) return false;
    }
    if (!(o.flags() & py::array::c_style) || !o.writeable()) return false;
    bool same_elements = o.data() == x.data() && o.dtype().equal(x.dtype());
    // (The stride of an axis of extent 1 addresses nothing and may differ.)
    for (py::ssize_t d = 0; same_elements && d < x.ndim(); ++d) {
        same_elements = o.strides(d) == x.strides(d) || x.shape(d) == 1;
    }
    return same_elements || !bounds_overlap(o, x);
}

}  // namespace fastxent::bindings
