// Staged reading of logits: 16-bit floats (float16, bfloat16) and soft-capped logits.
//
// The kernels compute on T (float for 16-bit logits). When the logits are stored as 16-bit floats or
// pass through a soft cap, a kernel reads each row (or tile, or chunk) once from memory into a
// per-thread staging buffer of T, in cache, and runs the ordinary T code on it; a gradient or output
// goes the other way, from the staging buffer to the destination. No array of the logits' size is
// ever made: the staging buffer holds one row, tile or chunk per thread (staging_size in kernels.h).
//
// Included only by the per-ISA kernel files; everything is in an anonymous namespace (see math.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "half.h"
#include "kernels.h"
#include "math.h"
#include "parallel.h"
#include "row_engine.h"

namespace fastxent {
namespace {

// Note: soft cap. y = cap * tanh(x / cap) and its derivative dy/dx = 1 - tanh^2 = sech^2(x / cap).
// For float, in double: with a = |x / cap| and e = exp(-2a), tanh(a) = (1 - e) / (1 + e), whose
// relative error is at most about 1e-16 / a, far below a float ulp for a >= 1e-4, and a - a^3 / 3
// below that (error < a^5 / 7); sech^2 = 4e / (1 + e)^2 has no cancellation. Each value is rounded
// once to float. For double, the library's tanh and exp. x = -inf gives -cap (a masked logit
// becomes a finite one, as the formula says), with slope 0; NaN stays NaN, with slope 0 too: the
// gradient of a row with a NaN is NaN before the slope, except an ignored row's zeros, which stay 0
// (a NaN slope made them NaN, unlike the same call without a cap).

// cap * tanh(x / cap) in double, and e = exp(-2 |x / cap|) for the slope.
inline double softcap_one(double x, double cap, double& e) {
    const double z = x / cap;
    const double a = std::fabs(z);
    e = exp_double(-2.0 * a);
    const double t = a < 1e-4 ? a - a * a * a * (1.0 / 3.0) : (1.0 - e) / (1.0 + e);
    return cap * (z < 0.0 ? -t : t);
}

template <typename T>
void apply_softcap(T* values, T* slope, std::int64_t n, double cap) {
    if constexpr (std::is_same_v<T, double>) {
        for (std::int64_t i = 0; i < n; ++i) {
            const double z = values[i] / cap;
            if (slope != nullptr) {
                const double e = std::exp(-2.0 * std::fabs(z));
                slope[i] = z != z ? 0.0 : 4.0 * e / ((1.0 + e) * (1.0 + e));
            }
            values[i] = cap * std::tanh(z);
        }
    } else if (slope == nullptr) {
        for (std::int64_t i = 0; i < n; ++i) {
            double e;
            values[i] = static_cast<T>(softcap_one(static_cast<double>(values[i]), cap, e));
        }
    } else {
        // A separate loop, so that no branch is left in it (SSE2 has no masked store).
        for (std::int64_t i = 0; i < n; ++i) {
            double e;
            values[i] = static_cast<T>(softcap_one(static_cast<double>(values[i]), cap, e));
            slope[i] = static_cast<T>(e != e ? 0.0 : 4.0 * e / ((1.0 + e) * (1.0 + e)));
        }
    }
}

// Note: transposed tiles of staged rows. A small_rows tile of staged logits (16-bit, or soft-capped)
// is converted into a buffer of contiguous rows, in one call where its rows are contiguous, and then
// transposed into the tile by transpose_into_tile's shuffle blocks; store_transposed goes back the
// same way (transpose_from_tile, then one conversion of all the rows). Converted a row at a time,
// each conversion loop ran over a row's few elements (10 classes: one F16C block of 8 and two
// elements one at a time), the soft cap's too, and the transposes went element by element. Same
// values, so the same results. Measured against the previous build, paired in one process, two
// threads: float16 1048576 x 10 loss in 0.55 of the time, gradient 0.50, log_softmax 0.47; float16
// 1048576 x 2 loss 0.37, gradient 0.50, log_softmax 0.31; float16 65536 x 50 loss 0.80, gradient
// 0.63, softmax 0.69; bfloat16 1048576 x 10 loss 0.72, gradient 0.54, log_softmax 0.52, 65536 x 50
// gradient 0.59; soft-capped float32 1048576 x 10 gradient 0.51 and row losses 0.52, 65536 x 50
// gradient 0.55. One thread: 0.40-0.71.

// How a kernel reads the logits: T directly, or 16-bit floats converted to T; soft-capped or not.
template <typename T>
struct Logits {
    const T* native = nullptr;
    const std::uint16_t* half = nullptr;  // read instead of `native` when set
    HalfFormat format = HalfFormat::float16;
    double cap = 0.0;  // the soft cap; 0 for none

    bool staged() const { return half != nullptr || cap != 0.0; }

    // `count` consecutive elements from `offset` into out[0..count), converted and capped; the
    // cap's derivative into slope (when not null).
    void load(std::int64_t offset, std::int64_t count, T* out, T* slope) const {
        if (half == nullptr) {
            const T* source = native + offset;
            for (std::int64_t i = 0; i < count; ++i) out[i] = source[i];
        } else if (format == HalfFormat::bfloat16) {
            const std::uint16_t* source = half + offset;
            for (std::int64_t i = 0; i < count; ++i) out[i] = static_cast<T>(bfloat16_to_float(source[i]));
        } else {
            const std::uint16_t* source = half + offset;
            std::int64_t i = 0;
            if constexpr (std::is_same_v<T, float>) i = float16_block_to_float(source, count, out);
            for (; i < count; ++i) out[i] = static_cast<T>(float16_to_float(source[i]));
        }
        if (cap != 0.0) apply_softcap(out, slope, count, cap);
    }

    // A tile of `lanes` rows (lane l of class c at offset + c * stride + l) into tile[c * kTileLanes + l].
    void load_tile(std::int64_t offset, std::int64_t stride, std::int64_t classes, std::int64_t lanes, T* tile,
                   T* slope) const {
        for (std::int64_t c = 0; c < classes; ++c) {
            load(offset + c * stride, lanes, tile + c * kTileLanes, slope == nullptr ? nullptr : slope + c * kTileLanes);
        }
    }

    // `lanes` contiguous rows of `classes` elements (rows `row_stride` apart, from `offset`), transposed
    // into tile[c * kTileLanes + l] (see the Note on transposed tiles of staged rows).
    void load_transposed(std::int64_t offset, std::int64_t row_stride, std::int64_t classes, std::int64_t lanes,
                         T* tile, T* slope) const {
        T rows[kTileClasses * kTileLanes];
        T rows_slope[kTileClasses * kTileLanes];
        T* wanted_slope = slope == nullptr ? nullptr : rows_slope;
        if (row_stride == classes) {
            load(offset, lanes * classes, rows, wanted_slope);
        } else {
            for (std::int64_t l = 0; l < lanes; ++l) {
                load(offset + l * row_stride, classes, rows + l * classes,
                     wanted_slope == nullptr ? nullptr : wanted_slope + l * classes);
            }
        }
        transpose_into_tile(rows, classes, classes, lanes, tile);
        if (slope != nullptr) transpose_into_tile(rows_slope, classes, classes, lanes, slope);
    }

    // `count` consecutive elements from `offset`: in place when not staged, else loaded into
    // `buffer` (and the slope into `slope`, when not null) and read from there.
    const T* read(std::int64_t offset, std::int64_t count, T* buffer, T* slope) const {
        if (!staged()) return native + offset;
        load(offset, count, buffer, slope);
        return buffer;
    }

    // Where element `offset` is stored, and the size of a stored element (for prefetching).
    const void* stored(std::int64_t offset) const {
        return half != nullptr ? static_cast<const void*>(half + offset) : static_cast<const void*>(native + offset);
    }
    std::int64_t stored_size() const {
        return half != nullptr ? static_cast<std::int64_t>(sizeof(std::uint16_t)) : static_cast<std::int64_t>(sizeof(T));
    }

    // One element, converted and capped.
    T at(std::int64_t offset) const {
        T value;
        T slope;
        load(offset, 1, &value, &slope);
        return value;
    }
};

// Where a kernel writes an array of the logits' size (a gradient, a softmax): T directly, or 16-bit
// floats. Staged values are multiplied by the soft cap's slope on the way out (the chain rule).
template <typename T>
struct Destination {
    T* native = nullptr;
    std::uint16_t* half = nullptr;  // written instead of `native` when set
    HalfFormat format = HalfFormat::float16;

    bool present() const { return native != nullptr || half != nullptr; }

    // out[offset + i] = values[i] * slope[i] (or values[i] when slope is null), for i < count.
    void store(std::int64_t offset, const T* values, const T* slope, std::int64_t count) const {
        if (half == nullptr) {
            T* target = native + offset;
            if (slope == nullptr) {
                for (std::int64_t i = 0; i < count; ++i) target[i] = values[i];
            } else {
                for (std::int64_t i = 0; i < count; ++i) target[i] = values[i] * slope[i];
            }
            return;
        }
        std::uint16_t* target = half + offset;
        const bool brain = format == HalfFormat::bfloat16;
        if (slope == nullptr) {
            if (brain) {
                for (std::int64_t i = 0; i < count; ++i) target[i] = float_to_bfloat16(static_cast<float>(values[i]));
            } else {
                std::int64_t i = 0;
                if constexpr (std::is_same_v<T, float>) i = float_block_to_float16(values, count, target);
                for (; i < count; ++i) target[i] = float_to_float16(static_cast<float>(values[i]));
            }
        } else if (brain) {
            for (std::int64_t i = 0; i < count; ++i) {
                target[i] = float_to_bfloat16(static_cast<float>(values[i] * slope[i]));
            }
        } else {
            for (std::int64_t i = 0; i < count; ++i) {
                target[i] = float_to_float16(static_cast<float>(values[i] * slope[i]));
            }
        }
    }

    // A tile (as Logits::load_tile) to lane l of class c at offset + c * stride + l.
    void store_tile(std::int64_t offset, std::int64_t stride, const T* tile, const T* slope, std::int64_t classes,
                    std::int64_t lanes) const {
        for (std::int64_t c = 0; c < classes; ++c) {
            store(offset + c * stride, tile + c * kTileLanes, slope == nullptr ? nullptr : slope + c * kTileLanes,
                  lanes);
        }
    }

    // A transposed tile (as Logits::load_transposed) back to `lanes` contiguous rows of `classes`
    // (see the Note on transposed tiles of staged rows).
    void store_transposed(std::int64_t offset, const T* tile, const T* slope, std::int64_t classes,
                          std::int64_t lanes) const {
        T rows[kTileClasses * kTileLanes];
        T rows_slope[kTileClasses * kTileLanes];
        transpose_from_tile(tile, classes, lanes, rows);
        if (slope != nullptr) transpose_from_tile(slope, classes, lanes, rows_slope);
        store(offset, rows, slope == nullptr ? nullptr : rows_slope, lanes * classes);
    }

    // Zeros over `count` elements from `offset`.
    void zero(std::int64_t offset, std::int64_t count) const {
        if (half == nullptr) {
            for (std::int64_t i = 0; i < count; ++i) native[offset + i] = T(0);
        } else {
            for (std::int64_t i = 0; i < count; ++i) half[offset + i] = 0;
        }
    }
};

// The staging buffers of the calling thread: `values` and, when capped, `slope` after it.
template <typename T>
struct StagingBuffers {
    T* values;
    T* slope;
};

// Threads for a job (threads_for), never more in a staged call than it has staging buffers.
inline int staged_threads(std::int64_t items, std::int64_t elements, bool staged, int staging_threads) {
    const int threads = threads_for(items, elements);
    return staged && threads > staging_threads ? staging_threads : threads;
}

template <typename T>
StagingBuffers<T> thread_staging(T* staging, std::int64_t per_thread, bool capped) {
    T* values = staging + static_cast<std::int64_t>(current_thread()) * per_thread;
    return StagingBuffers<T>{values, capped ? values + per_thread / 2 : nullptr};
}

}  // namespace
}  // namespace fastxent
