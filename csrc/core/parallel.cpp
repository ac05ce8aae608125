#include "parallel.h"

#include <atomic>
#include <system_error>
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

// Note: OpenMP's default. OpenMP's thread count (omp_get_max_threads) belongs to each thread: a new
// thread starts from the process's default (OMP_NUM_THREADS, or the processors this process may run
// on), and omp_set_num_threads, which threadpoolctl's threadpool_limits calls, changes only the
// calling thread's. So the default is read in a thread of its own, once: read in the first calling
// thread, it was that thread's count, and a threadpool_limits block around the first call kept the
// whole process at its limit for good.
int openmp_default() {
#ifdef _OPENMP
    static const int value = [] {
        int count = 1;
        try {
            std::thread([&count] { count = omp_get_max_threads(); }).join();
        } catch (const std::system_error&) {
            count = omp_get_max_threads();  // no thread to be had: the calling thread's count
        }
        return count;
    }();
    return value;
#else
    return 1;
#endif
}

std::atomic<int>& thread_setting() {
    static std::atomic<int> setting{openmp_default() < thread_limit() ? openmp_default() : thread_limit()};
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

// Note: OpenMP's own setting. fastxent's setting holds in every thread; set_max_threads also sets the
// calling thread's OpenMP count, as threadpoolctl expects to find it. Where a thread's OpenMP count
// is not what it would be without outside help (the count set_max_threads last gave that thread, or
// else the default, see the Note on OpenMP's default), something limited or raised OpenMP in that
// thread (threadpoolctl's threadpool_limits calls omp_set_num_threads), and the kernels take the
// smaller of the two, so that such tools limit fastxent too. Comparing with OpenMP's count alone
// made a raised setting hold only in the thread that set it (the others' smaller default won). A
// limit equal to the count expected cannot be told from no limit, and does not lower a setting raised
// above it.
namespace {
thread_local int openmp_count_set_here = 0;  // what set_max_threads gave this thread's OpenMP; 0: none
}

int max_threads() {
    if (forked_child.load()) return 1;
    const int setting = thread_setting().load();
#ifdef _OPENMP
    const int openmp = omp_get_max_threads();
    const int expected = openmp_count_set_here != 0 ? openmp_count_set_here : openmp_default();
    return openmp != expected && openmp < setting ? openmp : setting;
#else
    return setting;
#endif
}

void set_max_threads(int n) {
    if (n < 1) n = 1;
    thread_setting().store(n);
#ifdef _OPENMP
    omp_set_num_threads(n);
    openmp_count_set_here = n;
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
