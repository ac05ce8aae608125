// Memory for large results, kept for the next call (see the Note in result_memory.h).
#include "result_memory.h"

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>

#include "core/dispatch.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace fastxent::bindings {

namespace {

struct Block {
    void* data = nullptr;  // on a 64-byte line, inside `base`
    void* base = nullptr;  // from malloc
    std::size_t bytes = 0;
};

// The kept block. Results are created and freed with the GIL held, but the lock keeps this correct
// without one (free-threaded builds).
std::mutex kept_mutex;
Block kept;

// Makes `next` the kept block and frees the one kept before; returns its size (0 for none).
std::size_t replace_kept(Block next) {
    Block older;
    {
        const std::lock_guard<std::mutex> lock(kept_mutex);
        older = std::exchange(kept, next);
    }
    std::free(older.base);
    return older.bytes;
}

#if defined(__linux__)
// madvise over the whole pages inside [data, data + bytes).
void advise(void* data, std::size_t bytes, int advice) {
    const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
    const auto first = (reinterpret_cast<std::uintptr_t>(data) + page - 1) / page * page;
    const auto last = (reinterpret_cast<std::uintptr_t>(data) + bytes) / page * page;
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, advice);
}
#endif

// A block of at least `bytes`: for kKeptResultBytes or more, the kept one when it fits (and is at
// most twice as large); else a fresh one.
Block take_block(std::size_t bytes) {
    {
        const std::lock_guard<std::mutex> lock(kept_mutex);
        if (bytes >= kKeptResultBytes && kept.data != nullptr && kept.bytes >= bytes && kept.bytes / 2 <= bytes) {
            return std::exchange(kept, Block{});
        }
    }
    constexpr auto line = static_cast<std::size_t>(kLineBytes);
    void* base = bytes > SIZE_MAX - line ? nullptr : std::malloc(bytes + line);
    if (base == nullptr) throw std::bad_alloc();
    const auto address = reinterpret_cast<std::uintptr_t>(base);
    Block fresh{reinterpret_cast<void*>((address + line - 1) / line * line), base, bytes};
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    advise(fresh.data, bytes, MADV_HUGEPAGE);  // as NumPy does for its large arrays
#endif
    return fresh;
}

// The capsule destructor of a result's memory: keeps a block of kKeptResultBytes or more, freeing
// the one kept before; frees a smaller one.
void keep_block(void* pointer) {
    Block* block = static_cast<Block*>(pointer);
    if (block->bytes < kKeptResultBytes) {
        std::free(block->base);
        delete block;
        return;
    }
#if defined(__linux__) && defined(MADV_FREE)
    advise(block->data, block->bytes, MADV_FREE);
#endif
    replace_kept(*block);
    delete block;
}

}  // namespace

py::array new_result(const py::dtype& dtype, const std::vector<py::ssize_t>& shape) {
    std::size_t bytes = static_cast<std::size_t>(dtype.itemsize());
    for (const py::ssize_t extent : shape) bytes *= static_cast<std::size_t>(extent);
    if (bytes < kOwnResultBytes) return py::array(dtype, shape);
    Block* block = new Block(take_block(bytes));
    py::capsule owner;
    try {
        owner = py::capsule(block, keep_block);
    } catch (...) {
        keep_block(block);
        throw;
    }
    return py::array(dtype, shape, block->data, owner);
}

py::array narrowed_result(const py::array& values, const py::dtype& dtype, int half) {
    const std::vector<py::ssize_t> shape(values.shape(), values.shape() + values.ndim());
    py::array result = new_result(dtype, shape);
    const float* source = static_cast<const float*>(values.data());
    std::uint16_t* target = static_cast<std::uint16_t*>(result.mutable_data());
    const std::int64_t count = static_cast<std::int64_t>(values.size());
    {
        py::gil_scoped_release release;
        kernels().float_to_half(source, target, count, static_cast<HalfFormat>(half));
    }
    return result;
}

std::size_t release_kept_memory() { return replace_kept(Block{}); }

}  // namespace fastxent::bindings
