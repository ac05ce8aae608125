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
//   * the results of transposed tiles (small_rows) of more than kSmallClasses classes: the
//     gradient, softmax and log_softmax, a tile's rows (contiguous in the result) at a time
//     (stream_from_tile). Paired against ordinary stores in one process, two threads: the gradient
//     of 262144 x 64 float32 rows in 0.81-0.89 of the time, log_softmax of 262144 x 50 in
//     0.87-0.93; with 10 or 4 classes, whose tiles are mostly arithmetic, the gradient took
//     1.03-1.10 (1048576 x 10, x 4), and such tiles are not streamed.
//   * log_softmax of rows of kStreamRowElements or more, 4 KiB of a row at a time, its first and
//     last lines stored as usual (stream_log_softmax, softmax.cpp). Paired against ordinary stores
//     in one process, float32: 2048 x 32000 in 0.80 of the time on two threads (0.76 on one),
//     256 x 128256 in 0.86 (0.78), 8192 x 2048 in 0.84.
// Made in a buffer and streamed, the gradient of such long rows (2048 x 32000, 256 x 128256,
// 8192 x 2048) took 0.95-0.99 of the time of ordinary stores on two threads but 1.09-1.12 on one,
// and is not streamed.
// The values are the same either way; only the way they reach memory differs. Each thread of a
// kernel that streams ends with stream_fence(), which orders its streaming stores before what
// follows (the end of the parallel region; a fence after each tile made the gradient of
// 1048576 x 10 rows slower). Without x86 streaming instructions (arm64), stream_store is an
// ordinary copy.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels.h"
#include "row_engine.h"

#if defined(__SSE2__)
#include <immintrin.h>
#define FASTXENT_STREAMING_STORES 1
#endif

namespace fastxent {
namespace {

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

#if defined(FASTXENT_STREAMING_STORES)
// The 64 bytes at src into the line at dst (on a 64-byte line) by streaming stores, as bits.
inline void stream_line(void* dst, const void* src) {
#if defined(__AVX512F__)
    _mm512_stream_si512(static_cast<__m512i*>(dst), _mm512_loadu_si512(src));
#elif defined(__AVX__)
    __m256i* to = static_cast<__m256i*>(dst);
    const __m256i* from = static_cast<const __m256i*>(src);
    _mm256_stream_si256(to, _mm256_loadu_si256(from));
    _mm256_stream_si256(to + 1, _mm256_loadu_si256(from + 1));
#else
    __m128i* to = static_cast<__m128i*>(dst);
    const __m128i* from = static_cast<const __m128i*>(src);
    for (int q = 0; q < 4; ++q) _mm_stream_si128(to + q, _mm_loadu_si128(from + q));
#endif
}
#endif

// dst[0..n) = src[0..n), by streaming stores where there are any: dst on a 64-byte line and n a whole
// number of lines (streams_whole_lines), else by ordinary ones.
template <typename T>
inline void stream_store(T* dst, const T* src, std::int64_t n) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "float or double");
#if defined(FASTXENT_STREAMING_STORES)
    constexpr std::int64_t per_line = kLineBytes / static_cast<std::int64_t>(sizeof(T));
    if (streams_whole_lines(dst, n, 0)) {
        for (std::int64_t i = 0; i < n; i += per_line) stream_line(dst + i, src + i);
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

// dst[0..n) = src[0..n): the whole 64-byte lines of dst by streaming stores, the elements before
// the first and after the last as usual.
template <typename T>
inline void stream_span(T* dst, const T* src, std::int64_t n) {
    constexpr std::int64_t per_line = kLineBytes / static_cast<std::int64_t>(sizeof(T));
    const std::int64_t head = line_head(dst, n);
    const std::int64_t lines = (n - head) / per_line * per_line;
    for (std::int64_t i = 0; i < head; ++i) dst[i] = src[i];
    stream_store(dst + head, src + head, lines);
    for (std::int64_t i = head + lines; i < n; ++i) dst[i] = src[i];
}

// Whether a result of the view's size (T elements) is large enough to be streamed where the kernels
// can (kStreamResultBytes).
template <typename T>
bool large_result(const ClassAxisView& view) {
    return view.size() * static_cast<std::int64_t>(sizeof(T)) >= kStreamResultBytes;
}

// Whether the result of a view's transposed tiles (small_rows), if it has one, is streamed: a large
// one of more than kSmallClasses classes (stream_from_tile).
template <typename T>
bool streams_tiles(const ClassAxisView& view) {
    return view.classes > kSmallClasses && large_result<T>(view);
}

// transpose_from_tile into a large result: the tile's rows, contiguous there, made in `block`
// (kTileClasses * kTileLanes elements) and streamed from it (stream_span).
template <typename T>
void stream_from_tile(const T* tile, std::int64_t classes, std::int64_t lanes, T* rows, T* block) {
    transpose_from_tile(tile, classes, lanes, block);
    stream_span(rows, block, classes * lanes);
}


}  // namespace
}  // namespace fastxent
