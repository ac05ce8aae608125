#include "targets.h"

#include "dispatch.h"

namespace fastxent {

TargetCheck check_targets(const std::int64_t* target, std::int64_t count, std::int64_t classes,
                          std::int64_t ignore_index) {
    return kernels().check_targets(target, count, classes, ignore_index);
}

template <typename T>
double target_weight_sum(const std::int64_t* target, std::int64_t count, const T* weight,
                         std::int64_t ignore_index) {
    double total = 0.0;
    for (std::int64_t i = 0; i < count; ++i) {
        if (target[i] != ignore_index) total += static_cast<double>(weight[target[i]]);
    }
    return total;
}

template double target_weight_sum<float>(const std::int64_t*, std::int64_t, const float*, std::int64_t);
template double target_weight_sum<double>(const std::int64_t*, std::int64_t, const double*, std::int64_t);

}  // namespace fastxent
