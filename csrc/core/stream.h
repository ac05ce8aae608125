// Streaming (non-temporal) stores of large results, for the per-ISA kernel files.
//
// Note: streaming stores. An ordinary store into a line that is not in cache first reads the line
// from memory (to own it), then writes it back when it is evicted: a result much larger than the
// cache costs two memory transfers per line, on top of the logits' one. A streaming store writes a
// whole line without reading it, and leaves it out of the cache. So a result that cannot stay in
// cache anyway (kStreamResultBytes or more, kernels.h) is streamed where it is written, in runs of
// whole lines from a buffer in cache:
//   * the gradient of a copied tile along an inner axis, a row of the tile (a class's 128 lanes) at
//     a time (loss_tile, loss.cpp), only where every such run starts and ends on a 64-byte line:
//     the library's own large results are allocated on one (result_memory.h), and a caller's out=
//     array may be. Streaming the whole lines of runs whose first and last lines are shared with
//     the neighbouring runs (those stored as usual) made the 16 x 21 x 128 x 128 gradient slower,
//     not faster (1.03-1.5 times the time of ordinary stores, into a NumPy array 16 bytes past a
//     line). See the Note on a copied tile's gradient (loss.cpp) for what it gained.
//   * log_softmax of rows of kStreamRowElements or more, 4 KiB of a row at a time, its first and
//     last lines stored as usual (stream_log_softmax, softmax.cpp). Paired against ordinary stores
//     in one process, float32: 2048 x 32000 in 0.80 of the time on two threads (0.76 on one),
//     256 x 128256 in 0.86 (0.78), 8192 x 2048 in 0.84.
// Made in a buffer and streamed, the gradient of such long rows took 1.05-1.13 times as long as
// with ordinary stores (2048 x 32000, 256 x 128256, 8192 x 2048), and is not streamed.
// The values are the same either way; only the way they reach memory differs. After a tile's or a
// row's streaming stores, stream_fence() orders them before the stores that follow. Without x86
// streaming instructions (arm64), stream_store is an ordinary copy.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels.h"

#if defined(__SSE2__)
#include <immintrin.h>
#define FASTXENT_STREAMING_STORES 1
#endif

namespace fastxent {
namespace {

constexpr std::int64_t kLineBytes = 64;
// Rows of at least this many elements are streamed whole, their first and last lines aside.
constexpr std::int64_t kStreamRowElements = 1024;

// Whether runs of `n` elements at dst, and at dst + k * stride for every k, start and end on 64-byte
// lines, so that stream_store writes nothing but whole lines (see the Note above).
template <typename T>
inline bool streams_whole_lines(const T* dst, std::int64_t n, std::int64_t stride) {
    const auto bytes = static_cast<std::int64_t>(sizeof(T));
    return reinterpret_cast<std::uintptr_t>(dst) % kLineBytes == 0 && (n * bytes) % kLineBytes == 0 &&
           (stride * bytes) % kLineBytes == 0;
}

// dst[0..n) = src[0..n), by streaming stores where there are any: dst on a 64-byte line and n a whole
// number of lines (streams_whole_lines), else by ordinary ones.
template <typename T>
inline void stream_store(T* dst, const T* src, std::int64_t n) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "float or double");
#if defined(FASTXENT_STREAMING_STORES)
    constexpr std::int64_t per_line = kLineBytes / static_cast<std::int64_t>(sizeof(T));
    if (streams_whole_lines(dst, n, 0)) {
        for (std::int64_t i = 0; i < n; i += per_line) {
            if constexpr (std::is_same_v<T, float>) {
#if defined(__AVX512F__)
                _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
#elif defined(__AVX__)
                _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
                _mm256_stream_ps(dst + i + 8, _mm256_loadu_ps(src + i + 8));
#else
                for (int q = 0; q < 4; ++q) _mm_stream_ps(dst + i + 4 * q, _mm_loadu_ps(src + i + 4 * q));
#endif
            } else {
#if defined(__AVX512F__)
                _mm512_stream_pd(dst + i, _mm512_loadu_pd(src + i));
#elif defined(__AVX__)
                _mm256_stream_pd(dst + i, _mm256_loadu_pd(src + i));
                _mm256_stream_pd(dst + i + 4, _mm256_loadu_pd(src + i + 4));
#else
                for (int q = 0; q < 4; ++q) _mm_stream_pd(dst + i + 2 * q, _mm_loadu_pd(src + i + 2 * q));
#endif
            }
        }
        return;
    }
#endif
    for (std::int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

// How many of the n elements at dst come before its first 64-byte line boundary (n when dst is not
// aligned to its element size).
template <typename T>
inline std::int64_t line_head(const T* dst, std::int64_t n) {
    const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(dst);
    if (address % sizeof(T) != 0) return n;
    const auto head = static_cast<std::int64_t>((kLineBytes - address % kLineBytes) % kLineBytes / sizeof(T));
    return head < n ? head : n;
}

// Orders this thread's streaming stores before its later stores.
inline void stream_fence() {
#if defined(FASTXENT_STREAMING_STORES)
    _mm_sfence();
#endif
}

}  // namespace
}  // namespace fastxent
