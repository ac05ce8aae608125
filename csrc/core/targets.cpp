#include "targets.h"

namespace fastxent {

std::int64_t find_invalid_target(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                                 std::int64_t ignore_index) {
    for (std::int64_t i = 0; i < count; ++i) {
        const std::int64_t t = target[i];
        if ((t < 0 || t >= classes) && t != ignore_index) return i;
    }
    return -1;
}

template <typename T>
double target_weight_sum(const std::int64_t* target, std::int64_t count, const T* weight,
                         std::int64_t ignore_index) {
    if (weight == nullptr) {
        std::int64_t kept = 0;
        for (std::int64_t i = 0; i < count; ++i) kept += target[i] != ignore_index;
        return static_cast<double>(kept);
    }
    double total = 0.0;
    for (std::int64_t i = 0; i < count; ++i) {
        if (target[i] != ignore_index) total += static_cast<double>(weight[target[i]]);
    }
    return total;
}

template double target_weight_sum<float>(const std::int64_t*, std::int64_t, const float*, std::int64_t);
template double target_weight_sum<double>(const std::int64_t*, std::int64_t, const double*, std::int64_t);

}  // namespace fastxent
