#include "kernels/parallel.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LRPFAST_CPU_RELAX() _mm_pause()
#else
#define LRPFAST_CPU_RELAX() std::this_thread::yield()
#endif

namespace lrpfast {
namespace {

int env_threads(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);  // OMP_NUM_THREADS may be a list "4,2": take the first
  return (end != v && n >= 1 && n <= 4096) ? int(n) : 0;
}

int default_threads() {
  if (int n = env_threads("LRPFAST_NUM_THREADS")) return n;
  if (int n = env_threads("OMP_NUM_THREADS")) return n;
#ifdef CPU_COUNT
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
  const unsigned h = std::thread::hardware_concurrency();
  return h ? int(h) : 1;
}

std::atomic<int> g_threads{default_threads()};
thread_local bool t_in_task = false;  // set on pool workers and on a caller running a task

// Spin (yielding after a short while) until pred() or the budget runs out; true if pred() held.
template <class Pred>
bool spin_until(Pred pred) {
  using clock = std::chrono::steady_clock;
  constexpr auto kBudget = std::chrono::microseconds(50);
  for (int i = 0; i < 64; ++i) {
    if (pred()) return true;
    LRPFAST_CPU_RELAX();
  }
  const auto until = clock::now() + kBudget;
  do {
    for (int i = 0; i < 16; ++i) {
      if (pred()) return true;
      LRPFAST_CPU_RELAX();
    }
    std::this_thread::yield();
  } while (clock::now() < until);
  return pred();
}

class Pool {
 public:
  explicit Pool(int workers) {
    threads_.reserve(size_t(workers));
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, i] { work(i + 1); });
  }
  // Never destroyed (see pool()): workers block in wait() when the process exits.
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  int size() const { return int(threads_.size()) + 1; }
  std::mutex& busy() { return busy_; }

  // Caller holds busy(). Runs task on nt <= size() threads, the caller being thread 0.
  void run(int nt, TaskRef task) {
    task_ = &task;
    nt_ = nt;
    error_ = nullptr;
    pending_.store(int(threads_.size()), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(m_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    start_.notify_all();
    invoke(0);
    if (!spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lk(m_);
      done_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void invoke(int t) {
    if (t >= nt_) return;
    try {
      (*task_)(t, nt_);
    } catch (...) {
      std::lock_guard<std::mutex> lk(err_m_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void work(int id) {
    t_in_task = true;  // anything a task calls runs serially on this worker
    std::uint64_t seen = 0;
    for (;;) {
      auto changed = [&] { return generation_.load(std::memory_order_acquire) != seen; };
      if (!spin_until(changed)) {
        std::unique_lock<std::mutex> lk(m_);
        start_.wait(lk, changed);
      }
      seen = generation_.load(std::memory_order_acquire);
      invoke(id);
      // every worker checks in for every generation, so run() cannot hand out the next task while
      // a worker still reads this one
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(m_);
        done_.notify_one();
      }
    }
  }

  std::vector<std::thread> threads_;
  std::mutex busy_;  // one job at a time
  std::mutex m_;     // guards sleeping on start_/done_
  std::condition_variable start_, done_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  const TaskRef* task_ = nullptr;
  int nt_ = 1;
  std::mutex err_m_;
  std::exception_ptr error_;
};

// The pool is created on first use with the current thread count and replaced when the count
// changes; old pools and pools inherited through fork() are leaked on purpose (their threads are
// parked or, after fork, do not exist; joining them could hang).
std::mutex g_pool_m;
Pool* g_pool = nullptr;

void forget_pool_in_child() {
  g_pool = nullptr;
  new (&g_pool_m) std::mutex();
}

Pool* pool_for(int threads) {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, forget_pool_in_child);
    return true;
  }();
  (void)registered;
  std::lock_guard<std::mutex> lk(g_pool_m);
  if (!g_pool || g_pool->size() != threads) {
    if (g_pool) {  // park the old pool's workers for good only if nobody uses it
      std::unique_lock<std::mutex> busy(g_pool->busy(), std::try_to_lock);
      if (!busy.owns_lock()) return nullptr;
      busy.release();  // keep it locked forever: the old pool is retired
    }
    g_pool = new Pool(threads - 1);
  }
  return g_pool;
}

}  // namespace

void set_num_threads(int n) {
  if (n < 1 || n > 4096)
    throw std::invalid_argument("number of threads must be in 1..4096, got " + std::to_string(n));
  g_threads.store(n, std::memory_order_relaxed);
}

int num_threads() { return g_threads.load(std::memory_order_relaxed); }

void parallel_run(int max_threads, TaskRef task) {
  const int T = std::min(max_threads, num_threads());
  if (T <= 1 || t_in_task) {
    task(0, 1);
    return;
  }
  Pool* p = pool_for(num_threads());
  std::unique_lock<std::mutex> busy;
  if (p) busy = std::unique_lock<std::mutex>(p->busy(), std::try_to_lock);
  if (!p || !busy.owns_lock()) {  // another thread is using the pool: run serially
    task(0, 1);
    return;
  }
  t_in_task = true;
  struct Reset {
    ~Reset() { t_in_task = false; }
  } reset;
  p->run(std::min(T, p->size()), task);
}

}  // namespace lrpfast
