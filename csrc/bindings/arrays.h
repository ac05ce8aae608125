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

#include "core/kernels.h"

namespace fastxent::bindings {

namespace py = pybind11;

// (outer, classes, inner, outer_stride, class_stride) as sent by the Python layer.
using ViewTuple = std::array<std::int64_t, 5>;

inline ClassAxisView to_view(const ViewTuple& v) {
    if (v[0] < 0 || v[1] < 0 || v[2] < 0) throw std::invalid_argument("negative extent in the class-axis view");
    return ClassAxisView{v[0], v[1], v[2], v[3], v[4]};
}

// An array of exactly T in native byte order (NumPy's "equivalent types", not object identity).
template <typename T>
bool has_dtype(const py::handle& array) {
    return py::isinstance<py::array_t<T>>(array);
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

}  // namespace fastxent::bindings
