// The thread count used by the kernels, and when a job is worth spreading over threads.
#pragma once

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastxent {

// The largest thread count the kernels take: 1024 or the hardware's thread count, whichever is
// larger. OpenMP ends the process when it cannot create a thread it is asked for.
int thread_limit();
// The number of threads the kernels may use (initially OpenMP's default, itself set by
// OMP_NUM_THREADS or the machine's cores, up to thread_limit()), or the calling thread's OpenMP count
// where an outside tool lowered it (see the Note on OpenMP's own setting in parallel.cpp). Thread-safe.
int max_threads();
// Sets it; n outside [1, thread_limit()] is rejected by the caller. Without OpenMP every count
// behaves as 1.
void set_max_threads(int n);
bool openmp_enabled();

// Threads for a job of `items` independent work items over `elements` array elements: 1 for small
// jobs, where starting the team would cost more than it saves, and 1 in a child process forked after
// the parent used OpenMP (libgomp's thread pool does not survive fork; see parallel.cpp).
int threads_for(std::int64_t items, std::int64_t elements);

// The calling thread's number in its OpenMP team (0 outside a team, or without OpenMP).
inline int current_thread() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// Note: one thread without a team. libgomp ends every barrier, even one of a team of one thread,
// with a futex wake system call: a parallel region whose if clause is false still costs one at its
// end, and an `omp for` inside it (without nowait) one more, some tenths of a microsecond each on
// this machine. So a job on one thread runs its items in a plain loop, and a team's threads take
// their items without a barrier of their own, the region's end being the one barrier. Paired
// against parallel regions with if clauses and `omp for`, 32 x 10 float32: log_softmax in 0.57-0.64
// of the time (2.1-2.3 us to 1.2-1.3), cross_entropy in 0.63-0.75.
//
// The items run through one out-of-line function (run_items), so that the body is compiled once
// for both paths: inlined into each, it doubled in size and changed the compiler's inlining of the
// calls in it. A team's thread takes the contiguous range of items OpenMP's static schedule would
// give it.
template <typename Body>
#if defined(__GNUC__)
__attribute__((noinline))
#endif
void run_items(const Body& body, std::int64_t first, std::int64_t last) {
    for (std::int64_t item = first; item < last; ++item) body(item);
}

// body(item) for every item in [0, items), on `threads` threads (each a contiguous range, in order);
// then, on each thread, after_items() once its items are done (such as a fence for its streaming
// stores). See the Note on one thread without a team.
template <typename Body, typename AfterItems>
void for_each_item(std::int64_t items, int threads, const Body& body, const AfterItems& after_items) {
    if (threads <= 1) {
        run_items(body, 0, items);
        after_items();
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        std::int64_t first = 0;
        std::int64_t last = items;
#ifdef _OPENMP
        const std::int64_t team = omp_get_num_threads();
        const std::int64_t me = omp_get_thread_num();
        const std::int64_t share = items / team;
        const std::int64_t extra = items % team;  // the first `extra` threads take one item more
        first = me * share + (me < extra ? me : extra);
        last = first + share + (me < extra ? 1 : 0);
#endif
        run_items(body, first, last);
        after_items();
    }
}

template <typename Body>
void for_each_item(std::int64_t items, int threads, const Body& body) {
    for_each_item(items, threads, body, [] {});
}

}  // namespace fastxent
