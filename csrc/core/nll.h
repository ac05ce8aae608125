// nll_loss: the loss of log-probabilities that are already computed (one element read per row).
#pragma once

#include <cstdint>

#include "kernels.h"

namespace fastxent {

// row_loss[r] = -[t_r != ignore_index] * w[t_r] * log_probs[r, t_r] (when row_loss is set); returns
// their sum in double, in an order fixed by the rows (see the Note on the sum of nll_loss), spread
// over threads for many rows. Targets must have been validated. For T = float, the
// log-probabilities may instead be 16-bit floats of `half_format`, read (exactly) from `log_probs_half`
// when it is set.
template <typename T>
double nll_loss(const T* log_probs, const std::uint16_t* log_probs_half, HalfFormat half_format,
                const ClassAxisView& view, const std::int64_t* target, const T* weight, std::int64_t ignore_index,
                T* row_loss);

}  // namespace fastxent
