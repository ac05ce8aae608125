// Streaming (non-temporal) stores of large results, for the per-ISA kernel files.
//
// Note: streaming stores. An ordinary store into a line that is not in cache first reads the line
// from memory (to own it), then writes it back when it is evicted: a result much larger than the
// cache costs two memory transfers per line, on top of the logits' one. A streaming store writes a
// whole line without reading it, and leaves it out of the cache. So a result that cannot stay in
// cache anyway (kStreamResultBytes or more, kernels.h) is streamed where it is written in runs of
// whole lines from a buffer in cache: the gradient of a tile along an inner axis, a row of the tile
// at a time (loss_tile, loss.cpp). Only where every run starts and ends on a 64-byte line: the
// library's own large results are allocated on one (result_memory.h), and a caller's out= array
// may be. Streaming the whole lines of runs whose first and last lines are shared with the
// neighbouring runs (those stored as usual) made the 16 x 21 x 128 x 128 gradient slower, not
// faster (1.03-1.5 times the time of ordinary stores, into a NumPy array 16 bytes past a line).
// The values are the same either way;
// only the way they reach memory differs. After a tile's streaming stores, stream_fence() orders
// them before the stores that follow. Without x86 streaming instructions (arm64), stream_store is
// an ordinary copy.
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

// Orders this thread's streaming stores before its later stores.
inline void stream_fence() {
#if defined(FASTXENT_STREAMING_STORES)
    _mm_sfence();
#endif
}

}  // namespace
}  // namespace fastxent
