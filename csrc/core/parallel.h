// The thread count used by the kernels, and when a job is worth spreading over threads.
#pragma once

#include <cstdint>

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

}  // namespace fastxent
