#include "parallel.h"

#include <atomic>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace fastxent {
namespace {

// Below this many elements a job runs on the calling thread.
constexpr std::int64_t kParallelThreshold = 1 << 15;

std::atomic<int>& thread_setting() {
#ifdef _OPENMP
    static std::atomic<int> setting{omp_get_max_threads() < thread_limit() ? omp_get_max_threads() : thread_limit()};
#else
    static std::atomic<int> setting{1};
#endif
    return setting;
}

// Note: fork. A child forked while libgomp's worker threads exist has a copy of the pool's state but
// none of its threads; its first parallel region can hang. The child therefore runs every kernel on
// its own thread (results are identical: they never depend on the thread count).
std::atomic<bool> forked_child{false};

void mark_forked_child() { forked_child.store(true); }

[[maybe_unused]] const bool fork_handler_installed = [] {
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork(nullptr, nullptr, mark_forked_child);
#endif
    return true;
}();

}  // namespace

int thread_limit() {
    static const int limit = [] {
        const unsigned hardware = std::thread::hardware_concurrency();
        return hardware > 1024 ? static_cast<int>(hardware) : 1024;
    }();
    return limit;
}

// Note: OpenMP's own setting. set_max_threads also sets OpenMP's thread count of the calling thread,
// and max_threads takes the smaller of the two, so that tools that limit OpenMP from the outside
// (threadpoolctl's threadpool_limits, which calls omp_set_num_threads) limit fastxent too.
int max_threads() {
    if (forked_child.load()) return 1;
    const int setting = thread_setting().load();
#ifdef _OPENMP
    const int openmp = omp_get_max_threads();
    return openmp < setting ? openmp : setting;
#else
    return setting;
#endif
}

void set_max_threads(int n) {
    if (n < 1) n = 1;
    thread_setting().store(n);
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}

bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

int threads_for(std::int64_t items, std::int64_t elements) {
#ifdef _OPENMP
    if (elements < kParallelThreshold || items < 2) return 1;
    const std::int64_t threads = max_threads();
    return static_cast<int>(threads < items ? threads : items);
#else
    (void)items;
    (void)elements;
    return 1;
#endif
}

}  // namespace fastxent
