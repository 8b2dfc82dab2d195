// Fibers: a hand-written context switch on x86-64 (callee-saved registers, MXCSR and the x87 control word:
// ~10 ns; OS threads per CUDA thread cost ~0.5 ms per 256-thread barrier), ucontext elsewhere. Stacks are
// mmap'ed with a guard page below, pooled across launches, and annotated for AddressSanitizer.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "emu/internal.h"

#ifdef PERFKERN_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace perfkern {
namespace emu {
namespace {

#ifdef PERFKERN_EMU_ASAN
constexpr size_t kStackSize = 1024 * 1024;  // instrumented frames are several times larger
#else
constexpr size_t kStackSize = 256 * 1024;
#endif

std::mutex g_stack_mu;
std::vector<unsigned char*> g_free_stacks;

size_t page_size() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

}  // namespace

unsigned char* acquire_stack(size_t* size) {
  *size = kStackSize;
  {
    std::lock_guard<std::mutex> lock(g_stack_mu);
    if (!g_free_stacks.empty()) {
      unsigned char* s = g_free_stacks.back();
      g_free_stacks.pop_back();
      return s;
    }
  }
  const size_t guard = page_size();
  void* p = mmap(nullptr, kStackSize + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "perfkern emulator: cannot map a fiber stack of %zu bytes\n", kStackSize);
    std::abort();
  }
  // A stack overflow hits the guard page: a crash where it happens, not a corrupted neighbour.
  mprotect(p, guard, PROT_NONE);
  return static_cast<unsigned char*>(p) + guard;
}

void release_stack(unsigned char* stack) {
#ifdef PERFKERN_EMU_ASAN
  // An abandoned fiber (a faulting kernel) leaves its frames' redzones poisoned.
  ASAN_UNPOISON_MEMORY_REGION(stack, kStackSize);
#endif
  std::lock_guard<std::mutex> lock(g_stack_mu);
  g_free_stacks.push_back(stack);
}

#if defined(__x86_64__)

extern "C" void perfkern_emu_swap(void** save_sp, void* load_sp);
extern "C" void perfkern_emu_trampoline();

// perfkern_emu_swap: push the callee-saved registers and the floating-point control state, save rsp, load the
// other stack, pop its state, return into it. A new fiber "returns" into the trampoline, which calls
// entry(arg) with entry in rbx and arg in r12.
asm(R"(
  .text
  .p2align 4
  .globl perfkern_emu_swap
  .hidden perfkern_emu_swap
  .type perfkern_emu_swap, @function
perfkern_emu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size perfkern_emu_swap, .-perfkern_emu_swap

  .p2align 4
  .globl perfkern_emu_trampoline
  .hidden perfkern_emu_trampoline
  .type perfkern_emu_trampoline, @function
perfkern_emu_trampoline:
  movq %r12, %rdi
  callq *%rbx
  ud2
  .size perfkern_emu_trampoline, .-perfkern_emu_trampoline
)");

void fiber_init(Fiber& f, void (*entry)(void*), void* arg) {
  // From the top (16-byte aligned): the trampoline's address at top - 24, so that rsp is 16-byte aligned
  // once it has been "returned" into; below it rbp, rbx, r12..r15 and the control words.
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack + f.stack_size) & ~static_cast<uintptr_t>(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 80);
  uint32_t mxcsr = 0;
  uint16_t fpcw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  sp[0] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpcw) << 32);
  sp[1] = 0;                                         // r15
  sp[2] = 0;                                         // r14
  sp[3] = 0;                                         // r13
  sp[4] = reinterpret_cast<uint64_t>(arg);           // r12
  sp[5] = reinterpret_cast<uint64_t>(entry);         // rbx
  sp[6] = 0;                                         // rbp
  sp[7] = reinterpret_cast<uint64_t>(&perfkern_emu_trampoline);
  f.sp = sp;
}

namespace {
inline void raw_switch(Fiber& from, Fiber& to) { perfkern_emu_swap(&from.sp, to.sp); }
}  // namespace

#else  // ucontext

namespace {

struct Start {
  void (*entry)(void*);
  void* arg;
};

void start_fiber(unsigned hi, unsigned lo) {
  Start* s = reinterpret_cast<Start*>((static_cast<uintptr_t>(hi) << 32) | lo);
  s->entry(s->arg);
  std::abort();
}

inline void raw_switch(Fiber& from, Fiber& to) {
  if (from.context == nullptr) {
    from.context = new ucontext_t();
  }
  swapcontext(static_cast<ucontext_t*>(from.context), static_cast<ucontext_t*>(to.context));
}

}  // namespace

void fiber_init(Fiber& f, void (*entry)(void*), void* arg) {
  if (f.context == nullptr) {
    f.context = new ucontext_t();
  }
  // The start record lives at the top of the fiber's own stack.
  Start* s = reinterpret_cast<Start*>(f.stack + f.stack_size - 64);
  s->entry = entry;
  s->arg = arg;
  ucontext_t* uc = static_cast<ucontext_t*>(f.context);
  getcontext(uc);
  uc->uc_stack.ss_sp = f.stack;
  uc->uc_stack.ss_size = f.stack_size - 64;
  uc->uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(s);
  makecontext(uc, reinterpret_cast<void (*)()>(&start_fiber), 2, static_cast<unsigned>(p >> 32),
              static_cast<unsigned>(p & 0xffffffffu));
}

#endif

void fiber_switch(Fiber& from, Fiber& to) {
#ifdef PERFKERN_EMU_ASAN
  __sanitizer_start_switch_fiber(&from.fake_stack, to.stack, to.stack_size);
#endif
  raw_switch(from, to);
#ifdef PERFKERN_EMU_ASAN
  __sanitizer_finish_switch_fiber(from.fake_stack, nullptr, nullptr);
#endif
}

void fiber_leave(Fiber& from, Fiber& to) {
#ifdef PERFKERN_EMU_ASAN
  // A null save slot tells AddressSanitizer that `from` is finished.
  __sanitizer_start_switch_fiber(nullptr, to.stack, to.stack_size);
#endif
  raw_switch(from, to);
  std::abort();  // never resumed
}

void fiber_started(Fiber& scheduler) {
#ifdef PERFKERN_EMU_ASAN
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
  scheduler.stack = static_cast<unsigned char*>(const_cast<void*>(bottom));
  scheduler.stack_size = size;
#else
  (void)scheduler;
#endif
}

}  // namespace emu
}  // namespace perfkern
