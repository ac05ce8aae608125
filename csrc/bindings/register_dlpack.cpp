// Zero-copy import of CPU arrays from other libraries (a PyTorch tensor, a JAX array) through
// DLPack, including the 16-bit formats NumPy's own importer rejects (bfloat16).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fastxent::bindings {

namespace py = pybind11;

namespace {

// The unversioned DLPack ABI (dlpack.h, version 0.x), which every producer still exports when
// __dlpack__ is called without arguments. Only the fields read here are named.
struct DLDevice {
    std::int32_t device_type;  // 1: CPU
    std::int32_t device_id;
};
struct DLDataType {
    std::uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat
    std::uint8_t bits;
    std::uint16_t lanes;
};
struct DLTensor {
    void* data;
    DLDevice device;
    std::int32_t ndim;
    DLDataType dtype;
    std::int64_t* shape;
    std::int64_t* strides;  // in elements; null for C-contiguous
    std::uint64_t byte_offset;
};
struct DLManagedTensor {
    DLTensor dl_tensor;
    void* manager_ctx;
    void (*deleter)(DLManagedTensor* self);
};

constexpr std::int32_t kDLCPU = 1;
constexpr std::uint8_t kDLFloat = 2;
constexpr std::uint8_t kDLBfloat = 4;

// Returns (array, format): a NumPy array viewing the producer's memory, kept alive by the producer's
// deleter, and "float32", "float64", "float16" (a float16 array) or "bfloat16" (the bits as uint16).
py::tuple from_dlpack(const py::capsule& capsule) {
    if (std::string(capsule.name() == nullptr ? "" : capsule.name()) != "dltensor") {
        throw py::value_error("expected an unconsumed DLPack capsule (\"dltensor\")");
    }
    auto* managed = static_cast<DLManagedTensor*>(capsule.get_pointer());
    const DLTensor& tensor = managed->dl_tensor;
    if (tensor.device.device_type != kDLCPU) {
        throw py::type_error("only CPU arrays can be read in place (the array is on another device)");
    }
    const DLDataType dtype = tensor.dtype;
    std::string format;
    py::dtype numpy_type = py::dtype::of<float>();
    if (dtype.lanes == 1 && dtype.code == kDLFloat && dtype.bits == 32) {
        format = "float32";
    } else if (dtype.lanes == 1 && dtype.code == kDLFloat && dtype.bits == 64) {
        format = "float64";
        numpy_type = py::dtype::of<double>();
    } else if (dtype.lanes == 1 && dtype.code == kDLFloat && dtype.bits == 16) {
        format = "float16";
        numpy_type = py::dtype("float16");
    } else if (dtype.lanes == 1 && dtype.code == kDLBfloat && dtype.bits == 16) {
        format = "bfloat16";
        numpy_type = py::dtype::of<std::uint16_t>();
    } else {
        throw py::type_error("the array's dtype (DLPack code " + std::to_string(dtype.code) + ", " +
                             std::to_string(dtype.bits) + " bits) is not float16, bfloat16, float32 or float64");
    }
    const std::int64_t item = dtype.bits / 8;
    std::vector<py::ssize_t> shape(static_cast<std::size_t>(tensor.ndim));
    std::vector<py::ssize_t> strides(static_cast<std::size_t>(tensor.ndim));
    std::int64_t contiguous = item;
    for (std::int32_t d = tensor.ndim - 1; d >= 0; --d) {
        shape[d] = static_cast<py::ssize_t>(tensor.shape[d]);
        strides[d] = static_cast<py::ssize_t>(tensor.strides == nullptr ? contiguous : tensor.strides[d] * item);
        contiguous *= tensor.shape[d];
    }
    void* data = static_cast<char*>(tensor.data) + tensor.byte_offset;
    // The capsule is consumed: renamed, so that its own destructor no longer frees the tensor, which
    // is now owned by the array's base object.
    if (PyCapsule_SetName(capsule.ptr(), "used_dltensor") != 0) throw py::error_already_set();
    const py::capsule owner(managed, [](void* pointer) {
        auto* tensor_to_free = static_cast<DLManagedTensor*>(pointer);
        if (tensor_to_free->deleter != nullptr) tensor_to_free->deleter(tensor_to_free);
    });
    py::array array(numpy_type, shape, strides, data, owner);
    return py::make_tuple(array, format);
}

}  // namespace

void register_dlpack(py::module_& module) {
    module.def("from_dlpack", &from_dlpack, py::arg("capsule"));
}

}  // namespace fastxent::bindings
