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

int available_cpus() {
#ifdef CPU_COUNT
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
  const unsigned h = std::thread::hardware_concurrency();
  return h ? int(h) : 1;
}

namespace {

int env_threads(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);  // OMP_NUM_THREADS may be a list "4,2": take the first
  return (end != v && n >= 1 && n <= 4096) ? int(n) : 0;
}

int default_threads() {
  const int cpus = available_cpus();
  if (int n = env_threads("LRPFAST_NUM_THREADS")) return std::min(n, cpus);
  if (int n = env_threads("OMP_NUM_THREADS")) return std::min(n, cpus);
  return cpus;
}

std::atomic<int> g_threads{default_threads()};
thread_local bool t_in_task = false;  // set on pool workers and on a caller running a task
thread_local bool t_pooled_unit = false;  // inside a parallel_units unit spread over the pool

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

// Workers 1..size()-1 plus the calling thread 0. One job at a time (busy()). A job is published
// as one atomic word (generation << 16 | thread count), so a worker never reads the task of a
// generation it does not take part in, and run() waits only for the workers it uses.
class Pool {
 public:
  Pool() = default;
  // Never destroyed (see pool_for()): workers block in wait() when the process exits.
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  std::mutex& busy() { return busy_; }
  int size() const { return int(threads_.size()) + 1; }  // caller holds busy()

  // Caller holds busy(): no job is in flight.
  void grow(int threads) {
    const std::uint64_t now = state_.load(std::memory_order_acquire) >> kNtBits;
    for (int id = size(); id < threads; ++id)
      threads_.emplace_back([this, id, now] { work(id, now); });
  }

  // Caller holds busy(): no job is in flight. Ends and joins workers threads .. size()-1.
  void shrink(int threads) {
    if (threads < 1 || size() <= threads) return;
    exit_from_.store(threads, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(m_);  // a new generation that no worker takes part in
      const std::uint64_t gen = (state_.load(std::memory_order_relaxed) >> kNtBits) + 1;
      state_.store(gen << kNtBits, std::memory_order_release);
    }
    start_.notify_all();
    for (std::size_t i = std::size_t(threads) - 1; i < threads_.size(); ++i) threads_[i].join();
    threads_.resize(std::size_t(threads) - 1);
    exit_from_.store(kNoExit, std::memory_order_relaxed);
  }

  // Caller holds busy(). Runs task on nt threads (2 <= nt <= size()), the caller being thread 0.
  void run(int nt, TaskRef task) {
    task_ = &task;
    error_ = nullptr;
    pending_.store(nt - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(m_);
      const std::uint64_t gen = (state_.load(std::memory_order_relaxed) >> kNtBits) + 1;
      state_.store(gen << kNtBits | std::uint64_t(nt), std::memory_order_release);
    }
    start_.notify_all();
    invoke(0, nt);
    if (!spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lk(m_);
      done_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static constexpr int kNtBits = 16;  // thread counts are <= 4096
  static constexpr int kNoExit = 1 << 30;
  std::atomic<int> exit_from_{kNoExit};  // workers with this id or above end (shrink())

  void invoke(int t, int nt) {
    try {
      (*task_)(t, nt);
    } catch (...) {
      std::lock_guard<std::mutex> lk(err_m_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void work(int id, std::uint64_t seen) {
    t_in_task = true;  // anything a task calls runs serially on this worker
    bool spin = true;  // spin only after taking part (a sign that jobs come back to back)
    for (;;) {
      auto changed = [&] { return (state_.load(std::memory_order_acquire) >> kNtBits) != seen; };
      if (!(spin && spin_until(changed))) {
        std::unique_lock<std::mutex> lk(m_);
        start_.wait(lk, changed);
      }
      const std::uint64_t st = state_.load(std::memory_order_acquire);
      if (id >= exit_from_.load(std::memory_order_relaxed)) return;  // shrink()
      seen = st >> kNtBits;
      const int nt = int(st & ((1u << kNtBits) - 1));
      spin = id < nt;
      if (!spin) continue;  // not part of this job: do not touch task_
      invoke(id, nt);
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
  std::atomic<std::uint64_t> state_{0};  // generation << kNtBits | threads of the current job
  std::atomic<int> pending_{0};          // workers of the current job still running
  const TaskRef* task_ = nullptr;
  std::mutex err_m_;
  std::exception_ptr error_;
};

// One pool per process, created on first use and grown (never shrunk: fewer threads simply take
// part) when more threads are asked for. It is leaked on purpose, and forgotten in a fork()ed
// child, where its threads do not exist.
std::mutex g_pool_m;
Pool* g_pool = nullptr;

void forget_pool_in_child() {
  g_pool = nullptr;
  new (&g_pool_m) std::mutex();  // it may have been held by a thread that does not exist here
}

// The pool with at least `threads` threads, with its busy() lock taken; nullptr when another
// thread is using it.
Pool* pool_for(int threads, std::unique_lock<std::mutex>& busy) {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, forget_pool_in_child);
    return true;
  }();
  (void)registered;
  std::lock_guard<std::mutex> lk(g_pool_m);
  if (!g_pool) g_pool = new Pool();
  busy = std::unique_lock<std::mutex>(g_pool->busy(), std::try_to_lock);
  if (!busy.owns_lock()) return nullptr;
  if (g_pool->size() < threads) g_pool->grow(threads);
  return g_pool;
}

}  // namespace

bool in_pooled_unit() { return t_pooled_unit; }
PooledUnit::PooledUnit() : saved_(t_pooled_unit) { t_pooled_unit = true; }
PooledUnit::~PooledUnit() { t_pooled_unit = saved_; }

int set_num_threads(int n) {
  if (n < 1 || n > 4096)
    throw std::invalid_argument("number of threads must be in 1..4096, got " + std::to_string(n));
  n = std::min(n, available_cpus());
  g_threads.store(n, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lk(g_pool_m);
  if (g_pool && g_pool->size() > n && !t_in_task) {  // the pool shrinks with the setting
    std::lock_guard<std::mutex> busy(g_pool->busy());  // waits for a job in flight
    g_pool->shrink(n);
  }
  return n;
}

int pool_threads() {
  std::lock_guard<std::mutex> lk(g_pool_m);
  return g_pool ? g_pool->size() : 1;
}

int num_threads() { return g_threads.load(std::memory_order_relaxed); }

void parallel_run(int max_threads, TaskRef task) {
  const int T = std::min(max_threads, num_threads());
  if (T <= 1 || t_in_task) {
    task(0, 1);
    return;
  }
  std::unique_lock<std::mutex> busy;
  Pool* p = pool_for(T, busy);
  if (!p) {  // another thread is using the pool: run serially
    task(0, 1);
    return;
  }
  t_in_task = true;
  struct Reset {
    ~Reset() { t_in_task = false; }
  } reset;
  p->run(T, task);
}

}  // namespace lrpfast
