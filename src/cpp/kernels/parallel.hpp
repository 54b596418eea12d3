// lrpfast's one thread pool. Every parallel loop of the CPU engine runs on it, matrix products
// included: gemm() splits a product into per-thread slices and calls a single-threaded BLAS on each
// (BLAS's own threads are pinned to 1), so only ONE set of worker threads ever competes for cores.
//
// Why not OpenMP + a threaded BLAS: scipy-openblas32 runs its own pthreads pool, and libgomp's idle
// workers busy-wait (without yielding) for milliseconds after every parallel region, so alternating
// OpenMP loops and BLAS calls oversubscribes the cores (measured: a conv of 30 ms took 120 ms on 2
// cores, and numpy's BLAS right after an lrpfast call lost ~10 ms). The pool's workers spin only
// ~50 us (yielding) before sleeping, which keeps back-to-back dispatches cheap without starving
// other thread pools in the process.
//
// Semantics: parallel_for() partitions [0, n) statically among up to num_threads() threads, the
// calling thread included. A call made from inside a pool task, or while another thread is using
// the pool (two Python threads calling lrpfast at once), runs serially on the calling thread -- so
// kernels may call gemm() and parallel_for() freely, never nest or deadlock, and results do not
// depend on the number of threads (every partition computes the same per-element arithmetic).
// The body must not throw (kernels validate before computing); if it does, the exception is
// rethrown on the calling thread after all threads finished.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

namespace lrpfast {

// n in 1..4096, capped at available_cpus(); takes effect at the next parallel call, and the pool's
// threads beyond it end. Returns the number set.
int set_num_threads(int n);
int num_threads();     // default: LRPFAST_NUM_THREADS, else OMP_NUM_THREADS, else the CPUs
                       // this process may run on; always capped at available_cpus()
int available_cpus();  // CPUs this process may run on (sched_getaffinity)
int pool_threads();    // threads the pool holds now, the caller's included (1 before first use)

// Loops touching fewer elements than this stay serial (waking threads costs microseconds).
constexpr std::int64_t kParallelGrain = std::int64_t(1) << 15;

// A non-owning reference to a callable `void(int thread, int nthreads)`.
class TaskRef {
 public:
  template <class F>
  TaskRef(F& f) : obj_(&f), call_([](void* o, int t, int nt) { (*static_cast<F*>(o))(t, nt); }) {}
  void operator()(int t, int nt) const { call_(obj_, t, nt); }

 private:
  void* obj_;
  void (*call_)(void*, int, int);
};

// Runs task(t, nt) for t = 0 .. nt-1 on nt threads (the caller is t = 0); nt <= max_threads and
// nt = 1 when the pool is unavailable (nested call, pool busy, 1 thread). Returns after all finish.
void parallel_run(int max_threads, TaskRef task);

// body(lo, hi) over a static partition of [0, n) into contiguous ranges, one per thread; serial
// (body(0, n)) when work < kParallelGrain or n < 2.
template <class F>
void parallel_for(std::int64_t n, std::int64_t work, F&& body) {
  if (n <= 0) return;
  const int T = num_threads();
  if (T <= 1 || n < 2 || work < kParallelGrain) {
    body(std::int64_t(0), n);
    return;
  }
  auto task = [&](int t, int nt) {
    const std::int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    if (lo < hi) body(lo, hi);
  };
  parallel_run(n < T ? int(n) : T, TaskRef(task));
}

// Scratch buffers of one thread for parallel_units: allocated at first use (zeroed when asked,
// once), reused by every unit that thread runs in one call.
class Scratch {
 public:
  float* get(int slot, std::int64_t n, bool zeroed = false) {
    auto& b = bufs_[slot];
    if (b.second < n) {
      b = {std::unique_ptr<float[]>(zeroed ? new float[std::size_t(n)]()
                                           : new float[std::size_t(n)]),
           n};
    }
    return b.first.get();
  }

 private:
  std::pair<std::unique_ptr<float[]>, std::int64_t> bufs_[2];
};

// body(u, scratch) for every unit u in [0, units) of independent work. With at least two units
// per thread they are spread over the pool in dynamic order, each running single-threaded inside
// (its gemm and parallel_for calls see a pool task); otherwise they run in order on the calling
// thread with the pool available inside each. Either way a unit's arithmetic is the same.
// True inside a unit that parallel_units spreads over the pool (see there).
bool in_pooled_unit();
// Marks the calling thread as running such a unit while it lives.
class PooledUnit {
 public:
  PooledUnit();
  ~PooledUnit();
  PooledUnit(const PooledUnit&) = delete;
  PooledUnit& operator=(const PooledUnit&) = delete;

 private:
  bool saved_;
};

template <class F>
void parallel_units(int units, F&& body) {
  const int T = num_threads();
  if (T > 1 && units >= 2 * T) {
    // the units are marked (in_pooled_unit()) whether they run on the pool or -- when another
    // thread holds it -- one after another here, so their gemm() calls make the same slices
    std::atomic<int> next{0};
    auto task = [&](int, int) {
      Scratch sc;
      PooledUnit unit;
      for (int u; (u = next.fetch_add(1)) < units;) body(u, sc);
    };
    parallel_run(T, TaskRef(task));
    return;
  }
  Scratch sc;
  for (int u = 0; u < units; ++u) body(u, sc);
}

}  // namespace lrpfast
