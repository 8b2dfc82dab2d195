// The emulator's state, shared by its sources (csrc/emu/*.cpp): fibers, the threads, warps, warpgroups and
// barriers of a block, the host thread (worker) that runs blocks one after another, and the launch. Not
// installed; nothing here is part of the ABI.
//
// Execution model: a launch spreads its blocks over one worker per CPU core. A worker runs a block to its end:
// each CUDA thread is a fiber with its own stack, and the worker's scheduler resumes a random runnable fiber
// (seeded per launch and block) until it blocks at a barrier or a collective or exits. The last member to
// arrive at a collective performs it for all members and makes them runnable again. When nothing is runnable
// and some thread has not exited, the block is deadlocked: the launch fails with what each waiting group is
// waiting for and who never came.
#ifndef PERFKERN_EMU_INTERNAL_H_
#define PERFKERN_EMU_INTERNAL_H_

#include <array>
#include <atomic>
#include <bitset>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "perfkern_emu/device.h"
#include "perfkern_emu/ptx.h"
#include "perfkern_emu/runtime.h"
#include "perfkern_emu/types.h"

#if defined(__SANITIZE_ADDRESS__)
#define PERFKERN_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PERFKERN_EMU_ASAN 1
#endif
#endif

namespace perfkern {
namespace emu {

// ---- fibers (fiber.cpp) ----------------------------------------------------------------------------------

struct Fiber {
  void* sp = nullptr;  // saved stack pointer (x86-64) or context (elsewhere) while switched out
  unsigned char* stack = nullptr;
  size_t stack_size = 0;
  void* context = nullptr;  // ucontext_t where there is no hand-written switch
  void* fake_stack = nullptr;  // AddressSanitizer's bookkeeping
};

// Stacks come from a process-wide pool (mmap'ed, a guard page below each).
unsigned char* acquire_stack(size_t* size);
void release_stack(unsigned char* stack);
// Prepares f (whose stack is set) to run entry(arg) at the first switch to it.
void fiber_init(Fiber& f, void (*entry)(void*), void* arg);
// Saves the running context in `from`, resumes `to`; returns when something switches back to `from`.
void fiber_switch(Fiber& from, Fiber& to);
// Resumes `to` for good: `from` is never resumed again.
[[noreturn]] void fiber_leave(Fiber& from, Fiber& to);
// Called first on a new fiber (AddressSanitizer learns the stack it came from); returns that stack.
void fiber_started(Fiber& scheduler);

// ---- the state of a block ----------------------------------------------------------------------------------

using Members = std::bitset<128>;

struct Thread;

// A rendezvous in progress: lanes of a warp or threads of a warpgroup. Every member leaves a pointer to its
// operands in `slots`; the last to arrive applies the operation to all of them.
struct Collective {
  const char* name = nullptr;
  int param = 0;
  int base = 0;  // the block-linear index of member 0
  Members expected;
  Members arrived;
  std::array<void*, 128> slots{};
};

// A warp (32 members) or a warpgroup (128): its collectives in progress (several, with disjoint masks).
struct Group {
  const char* scope = "warp";
  int index = 0;
  int size = 32;
  Members existing;  // the members the block has (the last warp of a block may be partial)
  std::vector<Collective> active;
};

struct Barrier {
  int expected = 0;  // 0: every thread that has not exited (__syncthreads)
  int arrived = 0;
  int reduce_op = -1;
  int reduce = 0;
  std::vector<Thread*> waiters;
};

struct PendingCopy {
  uint32_t dst;
  uint32_t size;
  std::array<unsigned char, 16> bytes;
};

struct Snapshot {
  uint32_t offset;  // 16 bytes of the shared window at this offset
  std::array<unsigned char, 16> bytes;
  const char* operand;
};

// One wgmma.mma_async of a warpgroup: the accumulator registers of each of its 128 threads and their result.
struct WgmmaOp {
  std::array<float*, 128> d{};
  int regs = 0;
  std::vector<float> result;  // [128][regs]
  std::vector<Snapshot> reads;
};

struct Warpgroup {
  Group group;
  std::vector<WgmmaOp*> uncommitted;
  std::deque<std::vector<WgmmaOp*>> committed;
  std::vector<WgmmaOp*> free_ops;
  bool fenced = false;  // a wgmma.fence since the last wgmma.wait_group (or since the start)
};

enum class ThreadState { kRunnable, kBlocked, kDone };

struct Thread {
  ThreadCoords coords;
  int linear = 0;
  int warp = 0;
  int lane = 0;
  Fiber fiber;
  ThreadState state = ThreadState::kRunnable;
  const char* waiting_at = nullptr;  // what a blocked thread waits for
  std::vector<PendingCopy> uncommitted;
  std::deque<std::vector<PendingCopy>> committed;
  std::vector<uint32_t> unfenced;  // 16-byte chunks its cp.async filled, not yet fenced for the async proxy
  int result = 0;                  // of __syncthreads_count/and/or
};

struct Launch;

struct Block {
  Launch* launch = nullptr;
  uint3 idx{};
  std::vector<Thread>* threads = nullptr;
  int live = 0;  // threads that have not exited
  std::vector<Group> warps;
  std::vector<Warpgroup> warpgroups;
  std::array<Barrier, 16> barriers;
  std::vector<Thread*> runnable;
  std::vector<uint16_t> unfenced_owner;  // per 16-byte chunk of the window: 1 + the thread, or 0
  uint64_t rng = 0;
  bool aborted = false;
};

// One host thread running blocks of a launch.
struct Worker {
  Launch* launch = nullptr;
  Fiber scheduler;
  Thread* current = nullptr;
  Block block;
  std::vector<Thread> threads;
  unsigned char* window = nullptr;  // the block's shared memory: [0, dyn_offset) unused, then the dynamic part
};

struct Launch {
  const char* name = nullptr;
  dim3 grid;
  dim3 block_dim;
  int block_threads = 0;
  int64_t blocks = 0;
  size_t dyn_offset = 0;
  size_t dyn_size = 0;
  size_t window_size = 0;  // dyn_offset + dyn_size
  KernelEntry entry = nullptr;
  void* closure = nullptr;
  uint64_t seed = 0;
  uint64_t index = 0;  // launches so far in this process
  int sm = 90;
  std::vector<uint32_t> order;  // the order blocks are handed out in
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  cudaError_t code = cudaSuccess;
  std::string message;
};

// ---- scheduler.cpp -----------------------------------------------------------------------------------------

extern thread_local Worker* tls_worker;

Worker& worker(const char* what);
Thread& current_thread(const char* what);
void run_blocks(Launch& launch);
// Records the first failure of a launch.
void record_failure(Launch& launch, cudaError_t code, const std::string& message);
// "kernel 'name' block (x, y, z) thread (x, y, z)" of the calling thread.
std::string where(const Worker& w, const Thread* t);

// The calling thread blocks (state kBlocked, `what` for diagnostics) until another makes it runnable.
void block_current(const char* what);
void make_runnable(Block& b, Thread* t);

// Member `member` of `group` arrives at collective `name` with `slot`; `expected` names every member. Returns
// the slots when this arrival completes the collective (the caller applies the operation, then calls
// finish_collective); otherwise blocks until the completing member has applied it, then returns nullptr.
void** arrive(Group& group, int member, const Members& expected, const char* name, int param, void* slot);
void finish_collective(Group& group, void** slots);
// Members of the calling thread's warp (its lanes that exist) and warpgroup.
Members warp_members(const Block& b, int warp);

// ---- runtime.cpp -------------------------------------------------------------------------------------------

int emulated_sm();
void set_last_error(cudaError_t code, const std::string& message);

// ---- instructions.cpp ---------------------------------------------------------------------------------------

// A pointer to `bytes` bytes of the calling block's dynamic shared memory at window address `addr`; a fault
// when they are not all inside it.
unsigned char* shared_bytes(uint32_t addr, size_t bytes, const char* what);
// Completes the calling thread's copies of one group (cp.async landing), at a wait_group.
void land_copies(Worker& w, Thread& t, std::vector<PendingCopy>& group);

constexpr unsigned char kSmemPoison = 0xff;
constexpr uint32_t kAccPoison = 0x7fcadbadu;  // the NaN an in-flight wgmma leaves in its accumulators

}  // namespace emu
}  // namespace perfkern

#endif  // PERFKERN_EMU_INTERNAL_H_
