// The problems of the scoring kernels (score.cpp): per-row statistics of language-model logits that
// evaluation needs, all from one pass over each row, for whole arrays or for spans of rows.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace fastxent {

// Every row of the view, with `candidates` targets per row (one target is candidates = 1).
template <typename T>
struct ScoreProblem {
    const T* input = nullptr;
    ClassAxisView view;
    const std::int64_t* target = nullptr;  // C-contiguous (rows, candidates), each in [0, classes)
    std::int64_t candidates = 1;

    // Per target, C-contiguous (rows, candidates).
    T* logprob = nullptr;        // log_softmax at the target
    bool* is_greedy = nullptr;   // target == argmax
    std::int64_t* rank = nullptr;  // classes whose logit is strictly greater than the target's
    // Per row, C-contiguous (rows).
    T* lse = nullptr;            // logsumexp
    std::int64_t* argmax = nullptr;  // first index of the max; the first NaN if the row has one
    T* entropy = nullptr;        // entropy of the softmax, in nats

    // 16-bit logits, read instead of `input` (T is float), through the staging buffer (kernels.h).
    const std::uint16_t* input_half = nullptr;
    HalfFormat half_format = HalfFormat::float16;
    T* staging = nullptr;
    int staging_threads = 0;
};

// Spans of rows (rows in C order of the view: row = outer * inner + inner position). Only the rows
// marked in row_covered are read, logits and targets alike.
template <typename T>
struct ScoreSpansProblem {
    const T* input = nullptr;
    ClassAxisView view;
    const std::int64_t* target = nullptr;      // (rows); in [0, classes) wherever row_covered is set
    const std::uint8_t* row_covered = nullptr;  // (rows): 1 for a row inside at least one span
    const std::int64_t* starts = nullptr;      // (spans), validated: 0 <= start <= start + length <= rows
    const std::int64_t* lengths = nullptr;     // (spans)
    std::int64_t spans = 0;
    // 16-bit logits, read instead of `input` (T is float); the kernel makes its own row buffers.
    const std::uint16_t* input_half = nullptr;
    HalfFormat half_format = HalfFormat::float16;

    // Scratch of (rows) entries, written for covered rows only.
    double* row_logprob = nullptr;
    bool* row_greedy = nullptr;

    // Per span.
    double* span_logprob = nullptr;  // sum of the target log-probabilities, added in row order
    bool* span_greedy = nullptr;     // every target of the span is the argmax of its row
};

}  // namespace fastxent
