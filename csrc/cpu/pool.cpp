// The CPU launchers' parallel runs. Built with OpenMP (PERFKERN_CPU_OPENMP, the default where the compiler has
// it), a run is an OpenMP parallel region: in a process that also runs torch, whose CPU build ships libgomp.so.1,
// the core then shares torch's OpenMP threads (one libgomp is loaded) rather than competing with them. Torch's
// idle OpenMP workers spin for a while after each of its parallel ops, so a pool of our own, woken right after
// one, found its cores taken and ran at about half speed. A forked child, which has no OpenMP threads, and builds
// without OpenMP use the pool below.
//
// The thread pool: workers started on first need and kept, so a call costs a wake-up, not a
// thread start. A call runs on at most the threads it asks for (the caller is thread 0); workers not asked stay
// asleep. Jobs share out their own work (a counter of chunks), so the caller never waits for a worker that the OS
// has not run yet: once the caller's own share of the job returns, the job is closed, and a worker that wakes
// later leaves it alone; the caller waits only for workers inside it. After a job a worker spins briefly (decode
// calls come back to back) and then sleeps on a condition variable, so an idle pool takes no CPU time from the
// framework that calls it.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if !defined(_WIN32)
#include <pthread.h>
#endif
#if defined(PERFKERN_CPU_OPENMP)
#include <omp.h>
#endif

#include "cpu/cpu.h"

namespace perfkern {
namespace cpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// How long an idle worker polls for the next job before it sleeps.
constexpr auto kSpin = std::chrono::microseconds(30);

class Pool {
 public:
  std::mutex call;  // held by a launcher for the whole call (PoolLock)

  void run(TaskFn fn, void* ctx, int threads) {
    if (threads <= 1) {
      fn(ctx, 0, 1);
      return;
    }
    start_workers(threads - 1);
    fn_ = fn;
    ctx_ = ctx;
    open_.store(true);
    {
      // The job's thread count travels in the generation word, so a worker reads both at once.
      std::lock_guard<std::mutex> lock(mutex_);
      const uint64_t next = ((generation_.load(std::memory_order_relaxed) >> 16) + 1) << 16;
      generation_.store(next | static_cast<uint64_t>(threads));
    }
    wake_.notify_all();
    fn(ctx, 0, threads);
    // Sequentially consistent with the workers' (active_++, then open_): either a worker sees the job closed, or
    // this thread sees it active and waits for it.
    open_.store(false);
    for (int spins = 0; active_.load() != 0; ++spins) {
      if (spins < 4096) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

  void* scratch(size_t bytes) {
    if (bytes > scratch_bytes_) {
      std::free(scratch_);
      const size_t rounded = (bytes + 63) / 64 * 64;
      scratch_ = std::aligned_alloc(64, rounded);
      scratch_bytes_ = scratch_ != nullptr ? rounded : 0;
    }
    return scratch_;
  }

 private:
  void start_workers(int count) {
    // A new worker's first job is the next generation, whenever the thread gets to run.
    const uint64_t current = generation_.load(std::memory_order_relaxed);
    while (started_ < count) {
      const int index = started_++;
      std::thread([this, index, current] { work(index, current); }).detach();
    }
  }

  void work(int index, uint64_t seen) {
    for (;;) {
      uint64_t gen = generation_.load(std::memory_order_acquire);
      const auto until = std::chrono::steady_clock::now() + kSpin;
      for (int spins = 0; gen == seen; ++spins) {
        cpu_relax();
        gen = generation_.load(std::memory_order_acquire);
        if (gen == seen && spins % 64 == 63 && std::chrono::steady_clock::now() > until) {
          std::unique_lock<std::mutex> lock(mutex_);
          wake_.wait(lock, [&] { return (gen = generation_.load(std::memory_order_acquire)) != seen; });
        }
      }
      seen = gen;
      const int threads = static_cast<int>(gen & 0xffff);
      if (index + 1 < threads) {
        active_.fetch_add(1);
        if (open_.load() && generation_.load() == gen) fn_(ctx_, index + 1, threads);
        active_.fetch_sub(1);
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> open_{false};  // the current job takes workers
  std::atomic<int> active_{0};     // workers inside a job's function (or about to check open_)
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int started_ = 0;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
};

// Never destroyed: workers may be asleep in it when the process exits.
Pool* g_pool = nullptr;
std::once_flag g_pool_once;

// Set in a forked child (by the fork handler, or perfkern_cpu_forked_child): libgomp's threads were the
// parent's, so the child runs on a pool of its own.
std::atomic<bool> g_forked{false};

#if !defined(_WIN32)
// A forked child has only the forking thread: it starts a pool of its own (the parent's may have been mid-call,
// its lock held, its workers gone). Registered when the library loads, so that a child whose parent never called
// a launcher (but ran OpenMP through torch) knows it is a child too.
void forget_pool_in_child() {
  if (g_pool != nullptr) g_pool = new Pool();
  g_forked = true;
}
[[maybe_unused]] const int g_atfork = pthread_atfork(nullptr, nullptr, forget_pool_in_child);
#endif

Pool& pool() {
  std::call_once(g_pool_once, [] {
    if (g_pool == nullptr) g_pool = new Pool();
  });
  return *g_pool;
}

}  // namespace

PoolLock::PoolLock() { pool().call.lock(); }
PoolLock::~PoolLock() { pool().call.unlock(); }

void pool_run(TaskFn fn, void* ctx, int threads) {
#if defined(PERFKERN_CPU_OPENMP)
  // Inside another parallel region (a caller's own OpenMP code) OpenMP would give one thread; the pool runs
  // the call there, as it does in a forked child.
  if (threads > 1 && !g_forked && !omp_in_parallel()) {
#pragma omp parallel num_threads(threads)
    fn(ctx, omp_get_thread_num(), omp_get_num_threads());
    return;
  }
  pool().run(fn, ctx, threads);
#else
  pool().run(fn, ctx, threads);
#endif
}

}  // namespace cpu
}  // namespace perfkern

extern "C" void perfkern_cpu_forked_child(void) { perfkern::cpu::g_forked = true; }

extern "C" const char* perfkern_cpu_threading(void) {
#if defined(PERFKERN_CPU_OPENMP)
  return perfkern::cpu::g_forked ? "pool" : "openmp";
#else
  return "pool";
#endif
}

namespace perfkern {
namespace cpu {

void* pool_scratch(size_t bytes) { return pool().scratch(bytes); }

}  // namespace cpu
}  // namespace perfkern
