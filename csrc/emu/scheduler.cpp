// Running a launch: workers, blocks, the fibers of a block and their random schedule, barriers, warp
// collectives (and their diagnostics: a collective or barrier that cannot complete fails the launch with its
// name and the members that never arrived), and the device-side functions of perfkern_emu/device.h.
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "emu/internal.h"

#ifdef PERFKERN_EMU_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace perfkern {
namespace emu {

thread_local Worker* tls_worker = nullptr;
thread_local const ThreadCoords* tls_coords = nullptr;

namespace {

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

constexpr size_t kCanary = 64;

std::string members_str(const Members& m, int limit) {
  std::string out;
  int i = 0;
  while (i < limit) {
    if (!m[i]) {
      ++i;
      continue;
    }
    int j = i;
    while (j + 1 < limit && m[j + 1]) {
      ++j;
    }
    out += (out.empty() ? "" : ",") + std::to_string(i) + (j > i ? "-" + std::to_string(j) : "");
    i = j + 1;
  }
  return out.empty() ? "none" : out;
}

// "0-3,7" for the sorted ids 0, 1, 2, 3, 7.
std::string ranges_str(const std::vector<int>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) {
      ++j;
    }
    out += (out.empty() ? "" : ",") + std::to_string(ids[i]) + (j > i ? "-" + std::to_string(ids[j]) : "");
    i = j + 1;
  }
  return out;
}

std::string dim_str(const uint3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

int cpu_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    return std::max(1, CPU_COUNT(&set));
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

void switch_to_scheduler(Worker& w, Thread& t) { fiber_switch(t.fiber, w.scheduler); }

// Every thread waiting at `bar` becomes runnable with the barrier's reduction; the barrier starts over.
void release_barrier(Block& b, Barrier& bar) {
  for (Thread* t : bar.waiters) {
    t->result = bar.reduce;
    make_runnable(b, t);
  }
  bar.waiters.clear();
  bar.arrived = 0;
  bar.reduce_op = -1;
  bar.reduce = 0;
}

// An exited thread no longer counts for __syncthreads (as on sm_70+): the barrier may now be complete.
[[noreturn]] void thread_exit(Worker& w, Thread& t) {
  Block& b = w.block;
  t.state = ThreadState::kDone;
  --b.live;
  Barrier& bar = b.barriers[0];
  if (bar.expected == 0 && bar.arrived > 0 && bar.arrived == b.live) {
    release_barrier(b, bar);
  }
  fiber_leave(t.fiber, w.scheduler);
}

void fiber_entry(void* arg) {
  Thread& t = *static_cast<Thread*>(arg);
  Worker& w = *tls_worker;
  fiber_started(w.scheduler);
  w.launch->entry(w.launch->closure);
  thread_exit(w, t);
}

void poison_window(Worker& w, const Launch& L) {
#ifdef PERFKERN_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(w.window, L.window_size);
  std::memset(w.window, kSmemPoison, L.window_size);
  // Nothing lives before the dynamic shared memory: any access there is reported where it happens.
  ASAN_POISON_MEMORY_REGION(w.window, L.dyn_offset);
#else
  std::memset(w.window, kSmemPoison, L.window_size + kCanary);
#endif
}

// Writes outside the dynamic shared memory that no instruction checked (ordinary stores through pointers).
void check_window(Worker& w, Launch& L) {
#ifndef PERFKERN_EMU_ASAN
  for (size_t i = 0; i < L.dyn_offset; ++i) {
    if (w.window[i] != kSmemPoison) {
      record_failure(L, cudaErrorIllegalAddress,
                     where(w, nullptr) + ": a store before the start of the dynamic shared memory (" +
                         std::to_string(L.dyn_offset - i) + " bytes before it)");
      return;
    }
  }
  for (size_t i = 0; i < kCanary; ++i) {
    if (w.window[L.window_size + i] != kSmemPoison) {
      record_failure(L, cudaErrorIllegalAddress,
                     where(w, nullptr) + ": a store past the end of the dynamic shared memory of " +
                         std::to_string(L.dyn_size) + " bytes (at byte " + std::to_string(L.dyn_size + i) + ")");
      return;
    }
  }
#else
  (void)w;
  (void)L;
#endif
}

std::string describe_waiters(const Block& b, const Members& missing, int base, int count) {
  // Why each missing member is not there: exited, or waiting elsewhere.
  std::string out;
  std::vector<std::pair<std::string, Members>> reasons;
  for (int m = 0; m < count; ++m) {
    if (!missing[m]) {
      continue;
    }
    const Thread& t = (*b.threads)[base + m];
    std::string why = t.state == ThreadState::kDone ? "exited"
                      : t.state == ThreadState::kBlocked
                          ? std::string("wait at ") + (t.waiting_at ? t.waiting_at : "?")
                          : "still runnable";
    auto it = std::find_if(reasons.begin(), reasons.end(), [&](const auto& r) { return r.first == why; });
    if (it == reasons.end()) {
      reasons.emplace_back(why, Members());
      it = reasons.end() - 1;
    }
    it->second.set(m);
  }
  for (const auto& r : reasons) {
    out += (out.empty() ? "" : "; ") + members_str(r.second, count) + " " + r.first;
  }
  return out;
}

std::string deadlock_report(const Block& b) {
  std::string out;
  auto report = [&](const Group& g) {
    const char* unit = g.size == 32 ? "lanes" : "threads";
    for (const Collective& c : g.active) {
      const Members missing = c.expected & ~c.arrived;
      out += std::string(out.empty() ? "" : " | ") + c.name + " in " + g.scope + " " + std::to_string(g.index) +
             ": " + unit + " " + members_str(c.arrived, g.size) + " arrived, " + unit + " " +
             members_str(missing, g.size) + " never did (" + describe_waiters(b, missing, c.base, g.size) + ")";
    }
  };
  for (const Group& g : b.warps) {
    report(g);
  }
  for (const Warpgroup& wg : b.warpgroups) {
    report(wg.group);
  }
  for (size_t id = 0; id < b.barriers.size(); ++id) {
    const Barrier& bar = b.barriers[id];
    if (bar.arrived == 0) {
      continue;
    }
    std::string name = id == 0 && bar.expected == 0 ? "__syncthreads" : "bar.sync " + std::to_string(id);
    // The threads that are not there, by what they do instead.
    std::vector<std::pair<std::string, std::vector<int>>> others;
    for (const Thread& t : *b.threads) {
      if (std::find(bar.waiters.begin(), bar.waiters.end(), &t) != bar.waiters.end()) {
        continue;
      }
      const std::string why = t.state == ThreadState::kDone ? "exited"
                              : std::string("wait at ") + (t.waiting_at ? t.waiting_at : "?");
      auto it = std::find_if(others.begin(), others.end(), [&](const auto& o) { return o.first == why; });
      if (it == others.end()) {
        others.emplace_back(why, std::vector<int>());
        it = others.end() - 1;
      }
      it->second.push_back(t.linear);
    }
    std::string rest;
    for (const auto& o : others) {
      rest += (rest.empty() ? "; threads " : ", threads ") + ranges_str(o.second) + " " + o.first;
    }
    out += std::string(out.empty() ? "" : " | ") + name + ": " + std::to_string(bar.arrived) + " of " +
           std::to_string(bar.expected == 0 ? b.live : bar.expected) + " threads arrived" + rest;
  }
  return out.empty() ? "no thread can run" : out;
}

void run_block(Worker& w, int64_t linear) {
  Launch& L = *w.launch;
  Block& b = w.block;
  const int64_t gx = L.grid.x;
  const int64_t gy = L.grid.y;
  b.idx = uint3{static_cast<unsigned>(linear % gx), static_cast<unsigned>((linear / gx) % gy),
                static_cast<unsigned>(linear / (gx * gy))};
  b.aborted = false;
  b.live = L.block_threads;
  b.runnable.clear();
  for (Group& g : b.warps) {
    g.active.clear();
  }
  for (Warpgroup& wg : b.warpgroups) {
    wg.group.active.clear();
    for (WgmmaOp* op : wg.uncommitted) {
      wg.free_ops.push_back(op);
    }
    wg.uncommitted.clear();
    for (auto& grp : wg.committed) {
      for (WgmmaOp* op : grp) {
        wg.free_ops.push_back(op);
      }
    }
    wg.committed.clear();
    wg.fenced = false;
  }
  for (Barrier& bar : b.barriers) {
    bar = Barrier();
  }
  std::fill(b.unfenced_owner.begin(), b.unfenced_owner.end(), 0);
  uint64_t s = L.seed ^ (L.index * 0x9e3779b97f4a7c15ull) ^ (static_cast<uint64_t>(linear) << 20);
  b.rng = splitmix(s);
  poison_window(w, L);

  const uint3 block_dim = L.block_dim;
  for (int i = 0; i < L.block_threads; ++i) {
    Thread& t = w.threads[i];
    t.coords.thread_idx = uint3{static_cast<unsigned>(i % block_dim.x),
                                static_cast<unsigned>((i / block_dim.x) % block_dim.y),
                                static_cast<unsigned>(i / (block_dim.x * block_dim.y))};
    t.coords.block_idx = b.idx;
    t.coords.block_dim = L.block_dim;
    t.coords.grid_dim = L.grid;
    t.linear = i;
    t.warp = i / 32;
    t.lane = i % 32;
    t.state = ThreadState::kRunnable;
    t.waiting_at = nullptr;
    t.uncommitted.clear();
    t.committed.clear();
    t.unfenced.clear();
    t.result = 0;
    fiber_init(t.fiber, &fiber_entry, &t);
    b.runnable.push_back(&t);
  }

  while (!b.runnable.empty() && !b.aborted && !L.failed.load(std::memory_order_relaxed)) {
    const size_t pick = static_cast<size_t>(splitmix(b.rng) % b.runnable.size());
    Thread* t = b.runnable[pick];
    b.runnable[pick] = b.runnable.back();
    b.runnable.pop_back();
    w.current = t;
    tls_coords = &t->coords;
    fiber_switch(w.scheduler, t->fiber);
    w.current = nullptr;
    tls_coords = nullptr;
  }
  if (b.aborted || L.failed.load(std::memory_order_relaxed)) {
    return;
  }
  if (b.live > 0) {
    record_failure(L, cudaErrorLaunchFailure, where(w, nullptr) + ": deadlock: " + deadlock_report(b));
    return;
  }
  check_window(w, L);
}

void worker_main(Launch& L) {
  Worker w;
  w.launch = &L;
  tls_worker = &w;
  const size_t alloc = L.window_size +
#ifdef PERFKERN_EMU_ASAN
                       0;
#else
                       kCanary;
#endif
  // 4096-byte aligned, so host addresses and window addresses agree on every alignment a kernel can ask for.
  void* window = nullptr;
  if (posix_memalign(&window, 4096, std::max<size_t>(alloc, 1)) != 0) {
    record_failure(L, cudaErrorMemoryAllocation, "cannot allocate the emulated shared memory");
    tls_worker = nullptr;
    return;
  }
  w.window = static_cast<unsigned char*>(window);
  w.threads.resize(static_cast<size_t>(L.block_threads));
  for (Thread& t : w.threads) {
    t.fiber.stack = acquire_stack(&t.fiber.stack_size);
  }
  Block& b = w.block;
  b.launch = &L;
  b.threads = &w.threads;
  b.warps.resize(static_cast<size_t>((L.block_threads + 31) / 32));
  for (size_t i = 0; i < b.warps.size(); ++i) {
    b.warps[i].index = static_cast<int>(i);
    for (int lane = 0; lane < 32 && static_cast<int>(i) * 32 + lane < L.block_threads; ++lane) {
      b.warps[i].existing.set(static_cast<size_t>(lane));
    }
  }
  b.warpgroups.resize(static_cast<size_t>((L.block_threads + 127) / 128));
  for (size_t i = 0; i < b.warpgroups.size(); ++i) {
    b.warpgroups[i].group.scope = "warpgroup";
    b.warpgroups[i].group.index = static_cast<int>(i);
    b.warpgroups[i].group.size = 128;
  }
  b.unfenced_owner.assign((L.window_size + 15) / 16, 0);

  while (!L.failed.load(std::memory_order_relaxed)) {
    const int64_t i = L.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= L.blocks) {
      break;
    }
    run_block(w, L.order.empty() ? i : static_cast<int64_t>(L.order[static_cast<size_t>(i)]));
  }

  for (Thread& t : w.threads) {
    release_stack(t.fiber.stack);
  }
  for (Warpgroup& wg : b.warpgroups) {
    for (WgmmaOp* op : wg.free_ops) {
      delete op;
    }
    for (WgmmaOp* op : wg.uncommitted) {
      delete op;
    }
    for (auto& grp : wg.committed) {
      for (WgmmaOp* op : grp) {
        delete op;
      }
    }
  }
#ifdef PERFKERN_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(w.window, L.window_size);
#endif
  free(w.window);
  tls_worker = nullptr;
  tls_coords = nullptr;
}

}  // namespace

Worker& worker(const char* what) {
  if (tls_worker == nullptr || tls_worker->current == nullptr) {
    outside_kernel(what);
  }
  return *tls_worker;
}

Thread& current_thread(const char* what) { return *worker(what).current; }

std::string where(const Worker& w, const Thread* t) {
  const Launch& L = *w.launch;
  std::string out = std::string("kernel '") + L.name + "' block " + dim_str(w.block.idx);
  if (t != nullptr) {
    out += " thread " + dim_str(t->coords.thread_idx);
  }
  return out;
}

void record_failure(Launch& L, cudaError_t code, const std::string& message) {
  std::lock_guard<std::mutex> lock(L.mu);
  if (!L.failed.load()) {
    L.code = code;
    L.message = message + " [emulated sm_" + std::to_string(L.sm) + ", PERFKERN_EMULATE_SEED=" +
                std::to_string(L.seed) + ", launch " + std::to_string(L.index) + "]";
    L.failed.store(true);
  }
}

void run_blocks(Launch& L) {
  uint64_t s = L.seed ^ (L.index * 0xd1b54a32d192ed03ull);
  // Blocks are handed out in a random order (up to a million of them; beyond, in order).
  if (L.blocks > 1 && L.blocks <= (1 << 20)) {
    L.order.resize(static_cast<size_t>(L.blocks));
    for (size_t i = 0; i < L.order.size(); ++i) {
      L.order[i] = static_cast<uint32_t>(i);
    }
    for (size_t i = L.order.size() - 1; i > 0; --i) {
      std::swap(L.order[i], L.order[splitmix(s) % (i + 1)]);
    }
  }
  const int workers = static_cast<int>(std::min<int64_t>(cpu_count(), L.blocks));
  std::vector<std::thread> threads;
  for (int i = 1; i < workers; ++i) {
    threads.emplace_back([&L] { worker_main(L); });
  }
  worker_main(L);
  for (std::thread& t : threads) {
    t.join();
  }
}

void block_current(const char* what) {
  Worker& w = worker(what);
  Thread& t = *w.current;
  t.state = ThreadState::kBlocked;
  t.waiting_at = what;
  switch_to_scheduler(w, t);
}

void make_runnable(Block& b, Thread* t) {
  t->state = ThreadState::kRunnable;
  t->waiting_at = nullptr;
  b.runnable.push_back(t);
}

Members warp_members(const Block& b, int warp) { return b.warps[static_cast<size_t>(warp)].existing; }

void** arrive(Group& group, int member, const Members& expected, const char* name, int param, void* slot) {
  const int size = group.size;
  if (!expected[static_cast<size_t>(member)]) {
    fault(cudaErrorLaunchFailure, "%s: the mask %s of %s %d does not include the calling member %d", name,
          members_str(expected, size).c_str(), group.scope, group.index, member);
  }
  // The member joins the collective of this kind and mask that waits for it (the oldest, if several); other
  // collectives that expect it are ones it has yet to reach. A collective that can never complete is reported
  // when the block deadlocks.
  Collective* c = nullptr;
  for (Collective& a : group.active) {
    const size_t m = static_cast<size_t>(member);
    if (a.expected[m] && !a.arrived[m] && a.param == param && (a.name == name || std::strcmp(a.name, name) == 0) &&
        a.expected == expected) {
      c = &a;
      break;
    }
  }
  if (c == nullptr) {
    group.active.emplace_back();
    c = &group.active.back();
    c->name = name;
    c->param = param;
    c->expected = expected;
    c->base = group.index * size;
  }
  c->arrived.set(static_cast<size_t>(member));
  c->slots[static_cast<size_t>(member)] = slot;
  if (c->arrived == c->expected) {
    return c->slots.data();
  }
  block_current(name);
  return nullptr;
}

void finish_collective(Group& group, void** slots) {
  Worker& w = *tls_worker;
  Block& b = w.block;
  for (size_t i = 0; i < group.active.size(); ++i) {
    Collective& c = group.active[i];
    if (c.slots.data() != slots) {
      continue;
    }
    for (int m = 0; m < group.size; ++m) {
      if (c.expected[static_cast<size_t>(m)]) {
        Thread* t = &(*b.threads)[static_cast<size_t>(c.base + m)];
        if (t != w.current) {
          make_runnable(b, t);
        }
      }
    }
    group.active.erase(group.active.begin() + static_cast<std::ptrdiff_t>(i));
    return;
  }
}

// ---- device.h --------------------------------------------------------------------------------------------

void outside_kernel(const char* what) {
  std::fprintf(stderr, "perfkern emulator: %s used outside an emulated kernel\n", what);
  std::abort();
}

void fault(cudaError_t code, const char* format, ...) {
  char buf[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buf, sizeof(buf), format, args);
  va_end(args);
  if (tls_worker == nullptr || tls_worker->current == nullptr) {
    std::fprintf(stderr, "perfkern emulator: %s (outside an emulated kernel)\n", buf);
    std::abort();
  }
  Worker& w = *tls_worker;
  Thread& t = *w.current;
  record_failure(*w.launch, code, where(w, &t) + ": " + buf);
  w.block.aborted = true;
  fiber_leave(t.fiber, w.scheduler);
}

void syncthreads() { (void)syncthreads_reduce(-1, 0); }

int syncthreads_reduce(int op, int predicate) {
  Worker& w = worker("__syncthreads");
  Block& b = w.block;
  Thread& t = *w.current;
  Barrier& bar = b.barriers[0];
  if (bar.arrived > 0 && bar.expected != 0) {
    fault(cudaErrorLaunchFailure, "__syncthreads while %d threads wait at bar.sync 0 with a thread count",
          bar.arrived);
  }
  if (bar.arrived == 0) {
    bar.expected = 0;
    bar.reduce_op = op;
    bar.reduce = op == 1 ? 1 : 0;
  } else if (bar.reduce_op != op) {
    fault(cudaErrorLaunchFailure, "__syncthreads%s meets __syncthreads%s of other threads in one barrier",
          op < 0 ? "" : op == 0 ? "_count" : op == 1 ? "_and" : "_or",
          bar.reduce_op < 0 ? "" : bar.reduce_op == 0 ? "_count" : bar.reduce_op == 1 ? "_and" : "_or");
  }
  if (op == 0) {
    bar.reduce += predicate != 0;
  } else if (op == 1) {
    bar.reduce &= predicate != 0;
  } else if (op == 2) {
    bar.reduce |= predicate != 0;
  }
  ++bar.arrived;
  if (bar.arrived == b.live) {
    t.result = bar.reduce;
    release_barrier(b, bar);
    return t.result;
  }
  bar.waiters.push_back(&t);
  block_current("__syncthreads");
  return t.result;
}

void bar_sync_impl(int id, int count, bool wait) {
  Worker& w = worker("bar.sync");
  Block& b = w.block;
  Thread& t = *w.current;
  if (id < 0 || id >= static_cast<int>(b.barriers.size())) {
    fault(cudaErrorIllegalInstruction, "bar.sync: barrier id %d is not in 0..15", id);
  }
  if (count <= 0 || count % 32 != 0 || count > static_cast<int>(b.threads->size())) {
    fault(cudaErrorIllegalInstruction, "bar.sync %d: thread count %d is not a positive multiple of 32 up to %zu", id,
          count, b.threads->size());
  }
  Barrier& bar = b.barriers[static_cast<size_t>(id)];
  if (bar.arrived > 0 && bar.expected != count) {
    fault(cudaErrorLaunchFailure, "bar.sync %d: thread count %d, while the threads already there gave %d", id, count,
          bar.expected == 0 ? b.live : bar.expected);
  }
  bar.expected = count;
  ++bar.arrived;
  if (bar.arrived == count) {
    release_barrier(b, bar);
    return;
  }
  if (wait) {
    bar.waiters.push_back(&t);
    block_current(id == 0 ? "bar.sync 0" : "bar.sync");
  }
}

void bar_sync(int id, int count) { bar_sync_impl(id, count, true); }
void bar_arrive(int id, int count) { bar_sync_impl(id, count, false); }

void syncwarp(unsigned mask) {
  Worker& w = worker("__syncwarp");
  Thread& t = *w.current;
  const Members expected(mask);
  if ((expected & ~warp_members(w.block, t.warp)).any()) {
    fault(cudaErrorLaunchFailure, "__syncwarp: mask 0x%08x names lanes the warp does not have", mask);
  }
  if (void** slots = arrive(w.block.warps[t.warp], t.lane, expected, "__syncwarp", 0, nullptr)) {
    finish_collective(w.block.warps[t.warp], slots);
  }
}

unsigned active_mask() {
  Worker& w = worker("__activemask");
  Thread& t = *w.current;
  unsigned m = 0;
  for (int lane = 0; lane < 32; ++lane) {
    const size_t i = static_cast<size_t>(t.warp * 32 + lane);
    if (i < w.threads.size() && w.threads[i].state != ThreadState::kDone) {
      m |= 1u << lane;
    }
  }
  return m;
}

namespace {

struct VoteSlot {
  int predicate;
  unsigned result;
};

struct ShflSlot {
  uint64_t value;
  uint64_t result;
  int src;  // -1: its own value
};

struct ReduceSlot {
  unsigned value;
  unsigned result;
};

const char* const kShflNames[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
const char* const kVoteNames[] = {"__ballot_sync", "__any_sync", "__all_sync"};
const char* const kReduceNames[] = {"__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync",
                                    "__reduce_and_sync", "__reduce_or_sync",  "__reduce_xor_sync"};

Members checked_mask(Worker& w, Thread& t, unsigned mask, const char* name) {
  const Members expected(mask);
  if ((expected & ~warp_members(w.block, t.warp)).any()) {
    fault(cudaErrorLaunchFailure, "%s: mask 0x%08x names lanes warp %d does not have", name, mask, t.warp);
  }
  return expected;
}

}  // namespace

unsigned vote(int op, unsigned mask, int predicate) {
  const char* name = kVoteNames[op];
  Worker& w = worker(name);
  Thread& t = *w.current;
  const Members expected = checked_mask(w, t, mask, name);
  VoteSlot slot{predicate != 0, 0};
  Group& g = w.block.warps[t.warp];
  if (void** slots = arrive(g, t.lane, expected, name, 0, &slot)) {
    unsigned ballot = 0;
    for (int lane = 0; lane < 32; ++lane) {
      if (expected[lane] && static_cast<VoteSlot*>(slots[lane])->predicate) {
        ballot |= 1u << lane;
      }
    }
    const unsigned result = op == 0 ? ballot : op == 1 ? (ballot != 0) : (ballot == mask);
    for (int lane = 0; lane < 32; ++lane) {
      if (expected[lane]) {
        static_cast<VoteSlot*>(slots[lane])->result = result;
      }
    }
    finish_collective(g, slots);
  }
  return slot.result;
}

void shfl(int mode, unsigned mask, const void* in, void* out, size_t size, int arg, int width) {
  const char* name = kShflNames[mode];
  Worker& w = worker(name);
  Thread& t = *w.current;
  const Members expected = checked_mask(w, t, mask, name);
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    fault(cudaErrorLaunchFailure, "%s: width %d is not a power of two up to 32", name, width);
  }
  ShflSlot slot{0, 0, -1};
  std::memcpy(&slot.value, in, size);
  const int lane = t.lane;
  const int first = lane & ~(width - 1);
  const int last = first + width - 1;
  int src = lane;
  switch (mode) {
    case 0:
      src = first + (arg & (width - 1));
      break;
    case 1:
      src = lane - arg >= first ? lane - arg : lane;
      break;
    case 2:
      src = lane + arg <= last ? lane + arg : lane;
      break;
    default:
      src = (lane ^ arg) <= last ? (lane ^ arg) : lane;
      break;
  }
  slot.src = src;
  Group& g = w.block.warps[t.warp];
  if (void** slots = arrive(g, t.lane, expected, name, static_cast<int>(size), &slot)) {
    for (int l = 0; l < 32; ++l) {
      if (!expected[l]) {
        continue;
      }
      ShflSlot* s = static_cast<ShflSlot*>(slots[l]);
      if (s->src < 0 || s->src > 31 || !expected[s->src]) {
        fault(cudaErrorLaunchFailure, "%s: lane %d reads lane %d, which is not in the mask 0x%08x", name, l, s->src,
              mask);
      }
      s->result = static_cast<ShflSlot*>(slots[s->src])->value;
    }
    finish_collective(g, slots);
  }
  std::memcpy(out, &slot.result, size);
}

unsigned reduce(int op, unsigned mask, unsigned value, bool is_signed) {
  const char* name = kReduceNames[op];
  Worker& w = worker(name);
  Thread& t = *w.current;
  const Members expected = checked_mask(w, t, mask, name);
  ReduceSlot slot{value, 0};
  Group& g = w.block.warps[t.warp];
  if (void** slots = arrive(g, t.lane, expected, name, is_signed ? 1 : 0, &slot)) {
    bool any = false;
    unsigned acc = 0;
    for (int l = 0; l < 32; ++l) {
      if (!expected[l]) {
        continue;
      }
      const unsigned v = static_cast<ReduceSlot*>(slots[l])->value;
      if (!any) {
        acc = v;
        any = true;
        continue;
      }
      switch (op) {
        case 0:
          acc += v;
          break;
        case 1:
          acc = is_signed ? static_cast<unsigned>(std::min(static_cast<int>(acc), static_cast<int>(v)))
                          : std::min(acc, v);
          break;
        case 2:
          acc = is_signed ? static_cast<unsigned>(std::max(static_cast<int>(acc), static_cast<int>(v)))
                          : std::max(acc, v);
          break;
        case 3:
          acc &= v;
          break;
        case 4:
          acc |= v;
          break;
        default:
          acc ^= v;
          break;
      }
    }
    for (int l = 0; l < 32; ++l) {
      if (expected[l]) {
        static_cast<ReduceSlot*>(slots[l])->result = acc;
      }
    }
    finish_collective(g, slots);
  }
  return slot.result;
}

void yield() {
  Worker& w = worker("__nanosleep");
  Thread& t = *w.current;
  w.block.runnable.push_back(&t);
  switch_to_scheduler(w, t);
}

size_t shared_address(const void* p) {
  Worker& w = worker("__cvta_generic_to_shared");
  const Launch& L = *w.launch;
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (c < w.window + L.dyn_offset || c > w.window + L.window_size) {
    fault(cudaErrorIllegalAddress,
          "__cvta_generic_to_shared(%p): not a pointer into the block's dynamic shared memory (static __shared__ "
          "variables have no shared-window address in the emulator: use PERFKERN_DYNAMIC_SMEM)",
          p);
  }
  return static_cast<size_t>(c - w.window);
}

void* shared_pointer(size_t address) {
  Worker& w = worker("__cvta_shared_to_generic");
  if (address < w.launch->dyn_offset || address > w.launch->window_size) {
    fault(cudaErrorIllegalAddress, "__cvta_shared_to_generic(0x%zx): outside the block's shared memory", address);
  }
  return w.window + address;
}

bool is_shared(const void* p) {
  Worker& w = worker("__isShared");
  const unsigned char* c = static_cast<const unsigned char*>(p);
  return c >= w.window + w.launch->dyn_offset && c < w.window + w.launch->window_size;
}

int64_t clock_ticks() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void* dynamic_smem_base() {
  Worker& w = worker("dynamic shared memory");
  return w.window + w.launch->dyn_offset;
}

}  // namespace emu
}  // namespace perfkern
