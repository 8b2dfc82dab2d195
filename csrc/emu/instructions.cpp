// The host twins of the PTX instructions (perfkern_emu/ptx.h), from the PTX ISA's descriptions:
//   - "Data Movement and Conversion Instructions: cp.async" (commit/wait groups), "ldmatrix";
//   - "Warp-level matrix fragment layouts" for mma.m16n8k16 (.f16/.bf16, A row / B col, f32 accumulators) and
//     the sparse mma.sp::ordered_metadata.m16n8k32 (A: the m16n8k16 A layout over the 16 x 16 stored values;
//     metadata: in each group of four lanes, the selector names the two that hold it);
//   - "Asynchronous warpgroup level matrix" for wgmma: matrix descriptors (start, leading and stride byte
//     offsets, base offset, swizzle mode), the K-major canonical layouts with 32/64/128-byte swizzles, the
//     accumulator layout of m64nNk*, and the sparse metadata of m64nNk32.
// Nothing here reads the kernels' own layout headers.
#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "emu/internal.h"
#include "perfkern_emu/fp16.h"

namespace perfkern {
namespace emu {
namespace {

float to_float(Dtype t, uint16_t bits) {
  return t == Dtype::kF16 ? half_bits_to_float(bits) : bf16_bits_to_float(bits);
}

// Element i (low half first) of a register holding two 16-bit values.
uint16_t half_of(uint32_t reg, int i) { return static_cast<uint16_t>(i == 0 ? reg & 0xffffu : reg >> 16); }

bool is_acc_poison(float f) { return float_bits(f) == kAccPoison; }

Thread& thread(const char* what) { return current_thread(what); }

void require_sm90(const char* what) {
  if (emulated_sm() < 90) {
    fault(cudaErrorIllegalInstruction, "%s needs sm_90a; the emulated device is sm_%d (PERFKERN_EMULATE_SM)", what,
          emulated_sm());
  }
}

// ---- the metadata of sparse 2:4 instructions ---------------------------------------------------------------

// Indices (first, second) of the two kept entries of a 4-wide chunk, from its 4-bit metadata; ordered metadata
// needs first < second (0b0000, 0b0101, 0b1010, 0b1111 are invalid for every variant).
void decode_nibble(uint32_t nibble, const char* what, int lane, int bit, int row, int col, int idx[2]) {
  idx[0] = static_cast<int>(nibble & 3u);
  idx[1] = static_cast<int>((nibble >> 2) & 3u);
  if (idx[0] >= idx[1]) {
    fault(cudaErrorIllegalInstruction,
          "%s: invalid metadata 0x%x in bits %d-%d of lane %d (row %d, columns %d-%d): indices %d, %d; ordered "
          "metadata needs the first below the second",
          what, nibble, bit + 3, bit, lane, row, col, col + 3, idx[0], idx[1]);
  }
}

// ---- matrix descriptors (wgmma) ----------------------------------------------------------------------------

struct Descriptor {
  uint32_t start;
  uint32_t lbo;
  uint32_t sbo;
  int base_offset;
  int swizzle;  // bytes: 0 (none), 32, 64, 128
};

Descriptor decode_descriptor(uint64_t desc, const char* what, const char* operand) {
  Descriptor d;
  d.start = static_cast<uint32_t>(desc & 0x3fffu) << 4;
  d.lbo = static_cast<uint32_t>((desc >> 16) & 0x3fffu) << 4;
  d.sbo = static_cast<uint32_t>((desc >> 32) & 0x3fffu) << 4;
  d.base_offset = static_cast<int>((desc >> 49) & 7u);
  const int mode = static_cast<int>(desc >> 62);
  d.swizzle = mode == 0 ? 0 : 256 >> mode;  // 1: 128 B, 2: 64 B, 3: 32 B
  if (d.base_offset != 0) {
    fault(cudaErrorIllegalInstruction,
          "%s: the %s descriptor has base offset %d; the emulator takes swizzle patterns that start on their own "
          "boundary (base offset 0) only",
          what, operand, d.base_offset);
  }
  return d;
}

// Window address of byte `kbyte` (along K) of row `row` (along M or N) of a K-major operand.
uint32_t operand_address(const Descriptor& d, int row, uint32_t kbyte) {
  if (d.swizzle == 0) {
    // Core matrices of 8 rows x 16 bytes: LBO steps along K, SBO along rows.
    return d.start + static_cast<uint32_t>(row / 8) * d.sbo + (kbyte / 16) * d.lbo +
           static_cast<uint32_t>(row % 8) * 16 + kbyte % 16;
  }
  const uint32_t w = static_cast<uint32_t>(d.swizzle);
  const uint32_t addr = d.start + static_cast<uint32_t>(row / 8) * d.sbo + static_cast<uint32_t>(row % 8) * w +
                        (kbyte / w) * d.lbo + kbyte % w;
  // The swizzle XORs the 16-byte chunk index (address bits 4..) with the row within the pattern (bits 7..).
  return addr ^ (((addr >> 7) & (w / 16 - 1)) << 4);
}

// Reads `rows` x `kbytes` of a K-major operand into out[row][kbyte / 2] (16-bit elements), recording every
// 16-byte chunk it read.
void read_operand(const Descriptor& d, int rows, uint32_t kbytes, const char* what, const char* operand,
                  std::vector<uint16_t>& out, std::vector<Snapshot>& reads) {
  Worker& w = *tls_worker;
  Block& b = w.block;
  out.assign(static_cast<size_t>(rows) * kbytes / 2, 0);
  for (int r = 0; r < rows; ++r) {
    for (uint32_t kb = 0; kb < kbytes; kb += 16) {
      const uint32_t addr = operand_address(d, r, kb);
      if (addr % 16 != 0) {
        fault(cudaErrorMisalignedAddress, "%s: %s row %d bytes %u-%u at shared address 0x%x: not 16-byte aligned",
              what, operand, r, kb, kb + 15, addr);
      }
      const unsigned char* p = shared_bytes(addr, 16, what);
      const uint16_t owner = b.unfenced_owner[addr / 16];
      if (owner != 0) {
        fault(cudaErrorLaunchFailure,
              "%s reads %s row %d at shared offset 0x%x, which thread %d filled with cp.async and has not made "
              "visible to the async proxy (no fence.proxy.async after its cp.async.wait_group)",
              what, operand, r, addr, owner - 1);
      }
      std::memcpy(&out[(static_cast<size_t>(r) * kbytes + kb) / 2], p, 16);
      Snapshot s;
      s.offset = addr;
      s.operand = operand;
      std::memcpy(s.bytes.data(), p, 16);
      reads.push_back(s);
    }
  }
}

// ---- wgmma state of the calling warpgroup ------------------------------------------------------------------

struct WgmmaSlot {
  float* d;
  const uint32_t* a_regs;
  uint64_t a_desc;
  uint64_t b_desc;
  uint32_t e;
  uint32_t scale_d;
};

Warpgroup& warpgroup_of(Worker& w, Thread& t, const char* what) {
  if (w.launch->block_threads % 128 != 0) {
    fault(cudaErrorIllegalInstruction, "%s: the block has %d threads, not whole warpgroups of 128", what,
          w.launch->block_threads);
  }
  return w.block.warpgroups[static_cast<size_t>(t.linear / 128)];
}

Members all_members(int n) {
  Members m;
  for (int i = 0; i < n; ++i) {
    m.set(static_cast<size_t>(i));
  }
  return m;
}

// The newest pending wgmma of the warpgroup whose accumulators for member m are `d`, or null.
WgmmaOp* pending_on(Warpgroup& wg, int m, const float* d) {
  for (auto it = wg.uncommitted.rbegin(); it != wg.uncommitted.rend(); ++it) {
    if ((*it)->d[static_cast<size_t>(m)] == d) {
      return *it;
    }
  }
  for (auto g = wg.committed.rbegin(); g != wg.committed.rend(); ++g) {
    for (auto it = g->rbegin(); it != g->rend(); ++it) {
      if ((*it)->d[static_cast<size_t>(m)] == d) {
        return *it;
      }
    }
  }
  return nullptr;
}

// One wgmma.mma_async of the warpgroup, all 128 slots present: A (64 x k logical) times B (k x n) plus the
// accumulators, computed now from the operands as they are, the result held until the covering wait.
void issue_wgmma(Warpgroup& wg, void** slots, Dtype type, int n, int k, bool sparse, bool a_in_regs, int selector,
                 const char* what) {
  WgmmaSlot* s0 = static_cast<WgmmaSlot*>(slots[0]);
  for (int m = 1; m < 128; ++m) {
    const WgmmaSlot* s = static_cast<WgmmaSlot*>(slots[m]);
    if ((!a_in_regs && s->a_desc != s0->a_desc) || s->b_desc != s0->b_desc || s->scale_d != s0->scale_d) {
      fault(cudaErrorIllegalInstruction,
            "%s: thread %d of the warpgroup gives descriptors 0x%llx, 0x%llx and scale-d %u, thread 0 gives "
            "0x%llx, 0x%llx and %u: they must be the same in the whole warpgroup",
            what, m, static_cast<unsigned long long>(s->a_desc), static_cast<unsigned long long>(s->b_desc),
            s->scale_d, static_cast<unsigned long long>(s0->a_desc), static_cast<unsigned long long>(s0->b_desc),
            s0->scale_d);
    }
  }
  if (!wg.fenced) {
    fault(cudaErrorLaunchFailure,
          "%s without a wgmma.fence since the warpgroup's last wgmma.wait_group (or since the start): the "
          "accumulator registers may still be in use",
          what);
  }
  WgmmaOp* op;
  if (!wg.free_ops.empty()) {
    op = wg.free_ops.back();
    wg.free_ops.pop_back();
  } else {
    op = new WgmmaOp();
  }
  op->regs = n / 2;
  op->reads.clear();
  op->result.assign(static_cast<size_t>(128) * op->regs, 0.0f);

  // A as 16 stored values per row and the K index of each (the metadata's for sparse A; the entries 2:4
  // sparsity leaves out are not multiplied, as on the hardware).
  const int stored_k = 16;
  std::vector<uint16_t> a_bits;
  if (a_in_regs) {
    // The m16n8k16 A fragment of each warp's 16 rows.
    a_bits.assign(static_cast<size_t>(64) * stored_k, 0);
    for (int m = 0; m < 128; ++m) {
      const WgmmaSlot* s = static_cast<WgmmaSlot*>(slots[m]);
      const int warp = m / 32;
      const int lane = m % 32;
      for (int i = 0; i < 8; ++i) {
        const int row = 16 * warp + (lane >> 2) + 8 * ((i >> 1) & 1);
        const int col = 2 * (lane & 3) + (i & 1) + 8 * (i >> 2);
        a_bits[static_cast<size_t>(row) * stored_k + col] = half_of(s->a_regs[i / 2], i & 1);
      }
    }
  } else {
    const Descriptor da = decode_descriptor(s0->a_desc, what, "A");
    read_operand(da, 64, static_cast<uint32_t>(stored_k) * 2, what, "A", a_bits, op->reads);
  }
  std::vector<float> a(static_cast<size_t>(64) * stored_k);
  std::vector<int> k_of(static_cast<size_t>(64) * stored_k);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = to_float(type, a_bits[i]);
    k_of[i] = static_cast<int>(i % stored_k);
  }
  if (sparse) {
    for (int row = 0; row < 64; ++row) {
      const int warp = row / 16;
      const int g = row % 8;
      const int hi = (row % 16) / 8;
      for (int h = 0; h < 2; ++h) {
        // Selector s: lanes 4g + 2s + h of the row's warp hold the metadata of K columns 16h..16h+15.
        const int lane = 4 * g + 2 * selector + h;
        const uint32_t e = static_cast<WgmmaSlot*>(slots[32 * warp + lane])->e;
        for (int q = 0; q < 4; ++q) {
          const int bit = 16 * hi + 4 * q;
          int idx[2];
          decode_nibble((e >> bit) & 0xfu, what, 32 * warp + lane, bit, row, 16 * h + 4 * q, idx);
          for (int z = 0; z < 2; ++z) {
            k_of[static_cast<size_t>(row) * stored_k + 8 * h + 2 * q + z] = 16 * h + 4 * q + idx[z];
          }
        }
      }
    }
  }
  std::vector<uint16_t> b_bits;
  const Descriptor db = decode_descriptor(s0->b_desc, what, "B");
  read_operand(db, n, static_cast<uint32_t>(k) * 2, what, "B", b_bits, op->reads);
  std::vector<float> b(b_bits.size());
  for (size_t i = 0; i < b.size(); ++i) {
    b[i] = to_float(type, b_bits[i]);  // [n][k]
  }

  // Accumulator j of member m (warp w, lane l): row 16w + l/4 + 8 * ((j >> 1) & 1), column 8 * (j >> 2) +
  // 2 * (l % 4) + (j & 1).
  for (int m = 0; m < 128; ++m) {
    WgmmaSlot* s = static_cast<WgmmaSlot*>(slots[m]);
    const int warp = m / 32;
    const int lane = m % 32;
    const WgmmaOp* chained = pending_on(wg, m, s->d);
    for (int j = 0; j < op->regs; ++j) {
      float c = 0.0f;
      if (s->scale_d != 0) {
        if (chained != nullptr) {
          if (!is_acc_poison(s->d[j])) {
            fault(cudaErrorLaunchFailure,
                  "%s: accumulator register %d of warpgroup thread %d was written while an earlier wgmma on it "
                  "was in flight",
                  what, j, m);
          }
          c = chained->result[static_cast<size_t>(m) * op->regs + j];
        } else {
          c = s->d[j];
        }
      }
      const int row = 16 * warp + (lane >> 2) + 8 * ((j >> 1) & 1);
      const int col = 8 * (j >> 2) + 2 * (lane & 3) + (j & 1);
      double acc = c;
      const float* ar = &a[static_cast<size_t>(row) * stored_k];
      const int* kr = &k_of[static_cast<size_t>(row) * stored_k];
      const float* bc = &b[static_cast<size_t>(col) * k];
      for (int s = 0; s < stored_k; ++s) {
        acc += static_cast<double>(ar[s]) * bc[kr[s]];
      }
      op->result[static_cast<size_t>(m) * op->regs + j] = static_cast<float>(acc);
    }
    op->d[static_cast<size_t>(m)] = s->d;
  }
  // The registers are the tensor cores' until the covering wait.
  const float poison = bits_float(kAccPoison);
  for (int m = 0; m < 128; ++m) {
    float* d = static_cast<WgmmaSlot*>(slots[m])->d;
    for (int j = 0; j < op->regs; ++j) {
      d[j] = poison;
    }
  }
  wg.uncommitted.push_back(op);
}

void wgmma_common(Dtype type, int n, float* d, const uint32_t* a_regs, uint64_t a_desc, uint64_t b_desc, uint32_t e,
                  int selector, uint32_t scale_d, bool sparse, const char* what) {
  require_sm90(what);
  if (n < 8 || n > 256 || n % 8 != 0) {
    fault(cudaErrorIllegalInstruction, "%s: N = %d is not a multiple of 8 from 8 to 256", what, n);
  }
  if (sparse && selector != 0 && selector != 1) {
    fault(cudaErrorIllegalInstruction, "%s: sparsity selector %d is not 0 or 1", what, selector);
  }
  Worker& w = worker(what);
  Thread& t = *w.current;
  Warpgroup& wg = warpgroup_of(w, t, what);
  WgmmaSlot slot{d, a_regs, a_desc, b_desc, e, scale_d};
  const int param = n * 16 + static_cast<int>(type) * 4 + (sparse ? 2 : 0) + (a_regs != nullptr ? 1 : 0);
  if (void** slots = arrive(wg.group, t.linear % 128, all_members(128), what, param * 4 + selector, &slot)) {
    issue_wgmma(wg, slots, type, n, sparse ? 32 : 16, sparse, a_regs != nullptr, selector, what);
    finish_collective(wg.group, slots);
  }
}

}  // namespace

unsigned char* shared_bytes(uint32_t addr, size_t bytes, const char* what) {
  Worker& w = worker(what);
  const Launch& L = *w.launch;
  if (addr < L.dyn_offset || static_cast<size_t>(addr) + bytes > L.window_size) {
    fault(cudaErrorIllegalAddress,
          "%s: shared address 0x%x (+%zu bytes) is outside the block's shared memory [0x%zx, 0x%zx)", what, addr,
          bytes, L.dyn_offset, L.window_size);
  }
  return w.window + addr;
}

// ---- cp.async ----------------------------------------------------------------------------------------------

void cp_async(uint32_t dst, const void* src, int cp_size, int src_size) {
  const char* what = "cp.async";
  Thread& t = thread(what);
  if (cp_size != 4 && cp_size != 8 && cp_size != 16) {
    fault(cudaErrorIllegalInstruction, "%s: cp-size %d is not 4, 8 or 16", what, cp_size);
  }
  if (src_size < 0 || src_size > cp_size) {
    fault(cudaErrorIllegalInstruction, "%s: src-size %d is not in 0..%d", what, src_size, cp_size);
  }
  if (dst % static_cast<uint32_t>(cp_size) != 0) {
    fault(cudaErrorMisalignedAddress, "%s: shared destination 0x%x is not %d-byte aligned", what, dst, cp_size);
  }
  if (reinterpret_cast<uintptr_t>(src) % static_cast<uintptr_t>(cp_size) != 0) {
    fault(cudaErrorMisalignedAddress, "%s: global source %p is not %d-byte aligned", what, src, cp_size);
  }
  unsigned char* p = shared_bytes(dst, static_cast<size_t>(cp_size), what);
  PendingCopy c;
  c.dst = dst;
  c.size = static_cast<uint32_t>(cp_size);
  c.bytes.fill(0);
  if (src_size > 0) {
    std::memcpy(c.bytes.data(), src, static_cast<size_t>(src_size));
  }
  // Until the covering wait the destination holds poison: an early read sees it.
  std::memset(p, kSmemPoison, static_cast<size_t>(cp_size));
  t.uncommitted.push_back(c);
}

void cp_async_commit_group() {
  Thread& t = thread("cp.async.commit_group");
  t.committed.push_back(std::move(t.uncommitted));
  t.uncommitted.clear();
}

void land_copies(Worker& w, Thread& t, std::vector<PendingCopy>& group) {
  Block& b = w.block;
  for (const PendingCopy& c : group) {
    unsigned char* p = w.window + c.dst;
    for (uint32_t i = 0; i < c.size; ++i) {
      if (p[i] != kSmemPoison) {
        fault(cudaErrorLaunchFailure,
              "cp.async: shared memory at offset 0x%x, the destination of a copy still in flight, was written "
              "(a race: the copy lands at the cp.async.wait_group)",
              c.dst + i);
      }
    }
    std::memcpy(p, c.bytes.data(), c.size);
    const uint32_t chunk = c.dst / 16;
    if (b.unfenced_owner[chunk] != static_cast<uint16_t>(t.linear + 1)) {
      b.unfenced_owner[chunk] = static_cast<uint16_t>(t.linear + 1);
      t.unfenced.push_back(chunk);
    }
  }
}

void cp_async_wait_group(int n) {
  const char* what = "cp.async.wait_group";
  Worker& w = worker(what);
  Thread& t = *w.current;
  if (n < 0) {
    fault(cudaErrorIllegalInstruction, "%s %d: N must be >= 0", what, n);
  }
  while (static_cast<int>(t.committed.size()) > n) {
    land_copies(w, t, t.committed.front());
    t.committed.pop_front();
  }
}

void fence_proxy_async() {
  Worker& w = worker("fence.proxy.async");
  Thread& t = *w.current;
  require_sm90("fence.proxy.async");
  for (uint32_t chunk : t.unfenced) {
    if (w.block.unfenced_owner[chunk] == static_cast<uint16_t>(t.linear + 1)) {
      w.block.unfenced_owner[chunk] = 0;
    }
  }
  t.unfenced.clear();
}

// ---- ldmatrix ----------------------------------------------------------------------------------------------

namespace {

struct LdmatrixSlot {
  uint32_t* regs;
  uint32_t addr;
};

const char* const kLdmatrixNames[2][5] = {
    {"", "ldmatrix.m8n8.x1", "ldmatrix.m8n8.x2", "", "ldmatrix.m8n8.x4"},
    {"", "ldmatrix.m8n8.x1.trans", "ldmatrix.m8n8.x2.trans", "", "ldmatrix.m8n8.x4.trans"}};

}  // namespace

void ldmatrix(uint32_t* regs, int count, bool trans, uint32_t addr) {
  if (count != 1 && count != 2 && count != 4) {
    fault(cudaErrorIllegalInstruction, "ldmatrix: .x%d is not .x1, .x2 or .x4", count);
  }
  const char* what = kLdmatrixNames[trans ? 1 : 0][count];
  Worker& w = worker(what);
  Thread& t = *w.current;
  LdmatrixSlot slot{regs, addr};
  Group& g = w.block.warps[static_cast<size_t>(t.warp)];
  const Members all = all_members(32);
  if ((all & ~warp_members(w.block, t.warp)).any()) {
    fault(cudaErrorIllegalInstruction, "%s: warp %d is not a whole warp", what, t.warp);
  }
  if (void** slots = arrive(g, t.lane, all, what, 0, &slot)) {
    // Matrix j, row i comes from the address of lane 8j + i; 8 b16 elements per row.
    uint16_t mat[4][8][8];
    for (int j = 0; j < count; ++j) {
      for (int i = 0; i < 8; ++i) {
        const uint32_t row_addr = static_cast<LdmatrixSlot*>(slots[8 * j + i])->addr;
        if (row_addr % 16 != 0) {
          fault(cudaErrorMisalignedAddress, "%s: lane %d gives row address 0x%x, not 16-byte aligned", what, 8 * j + i,
                row_addr);
        }
        std::memcpy(mat[j][i], shared_bytes(row_addr, 16, what), 16);
      }
    }
    // Lane l receives, in register j, elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) of matrix j, or of
    // its transpose with .trans.
    for (int l = 0; l < 32; ++l) {
      uint32_t* out = static_cast<LdmatrixSlot*>(slots[l])->regs;
      for (int j = 0; j < count; ++j) {
        const int r = l / 4;
        const int c = 2 * (l % 4);
        const uint16_t lo = trans ? mat[j][c][r] : mat[j][r][c];
        const uint16_t hi = trans ? mat[j][c + 1][r] : mat[j][r][c + 1];
        out[j] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
      }
    }
    finish_collective(g, slots);
  }
}

// ---- mma.sync, mma.sp --------------------------------------------------------------------------------------

namespace {

struct MmaSlot {
  float* d;
  const uint32_t* a;
  const uint32_t* b;
  uint32_t e;
};

// The m16n8k16 A fragment (and the stored 16 x 16 A of sparse m16n8k32): element i of lane l is at row
// l/4 + 8 ((i >> 1) & 1), column 2 (l % 4) + (i & 1) + 8 (i >> 2).
void gather_a16(void** slots, Dtype type, float a[16][16]) {
  for (int l = 0; l < 32; ++l) {
    const uint32_t* regs = static_cast<MmaSlot*>(slots[l])->a;
    for (int i = 0; i < 8; ++i) {
      a[(l >> 2) + 8 * ((i >> 1) & 1)][2 * (l & 3) + (i & 1) + 8 * (i >> 2)] =
          to_float(type, half_of(regs[i / 2], i & 1));
    }
  }
}

// B (k x 8, column-major fragments): element i of lane l is at row 2 (l % 4) + (i & 1) + 8 (i >> 1), column l/4.
void gather_b(void** slots, Dtype type, int k, float b[32][8]) {
  for (int l = 0; l < 32; ++l) {
    const uint32_t* regs = static_cast<MmaSlot*>(slots[l])->b;
    for (int i = 0; i < k / 4; ++i) {
      b[2 * (l & 3) + (i & 1) + 8 * (i >> 1)][l >> 2] = to_float(type, half_of(regs[i / 2], i & 1));
    }
  }
}

// D = A B + C with A as 16 stored values per row and the K index of each (the identity for dense A; for sparse A
// the metadata's: the entries 2:4 sparsity leaves out are not multiplied, as on the hardware, so a NaN or inf in
// a row of B that no metadata names does not reach D). Accumulator i of lane l is at row l/4 + 8 (i >> 1),
// column 2 (l % 4) + (i & 1).
void scatter_d(void** slots, const float a[16][16], const int k_of[16][16], const float b[32][8]) {
  float out[32][4];
  for (int l = 0; l < 32; ++l) {
    const float* c = static_cast<MmaSlot*>(slots[l])->d;
    for (int i = 0; i < 4; ++i) {
      const int row = (l >> 2) + 8 * (i >> 1);
      const int col = 2 * (l & 3) + (i & 1);
      double acc = c[i];
      for (int s = 0; s < 16; ++s) {
        acc += static_cast<double>(a[row][s]) * b[k_of[row][s]][col];
      }
      out[l][i] = static_cast<float>(acc);
    }
  }
  for (int l = 0; l < 32; ++l) {
    std::memcpy(static_cast<MmaSlot*>(slots[l])->d, out[l], sizeof(out[l]));
  }
}

void warp_mma(const char* what, int param, MmaSlot* slot, void (*apply)(void** slots, int param)) {
  Worker& w = worker(what);
  Thread& t = *w.current;
  Group& g = w.block.warps[static_cast<size_t>(t.warp)];
  const Members all = all_members(32);
  if ((all & ~warp_members(w.block, t.warp)).any()) {
    fault(cudaErrorIllegalInstruction, "%s: warp %d is not a whole warp", what, t.warp);
  }
  if (void** slots = arrive(g, t.lane, all, what, param, slot)) {
    apply(slots, param);
    finish_collective(g, slots);
  }
}

}  // namespace

void mma_m16n8k16(Dtype type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  MmaSlot slot{d, a, b, 0};
  warp_mma(type == Dtype::kF16 ? "mma.m16n8k16.f16" : "mma.m16n8k16.bf16", static_cast<int>(type), &slot,
           [](void** slots, int param) {
             const Dtype t = static_cast<Dtype>(param);
             float a16[16][16];
             gather_a16(slots, t, a16);
             int k_of[16][16];
             for (int r = 0; r < 16; ++r) {
               for (int s = 0; s < 16; ++s) {
                 k_of[r][s] = s;
               }
             }
             float bm[32][8] = {};
             gather_b(slots, t, 16, bm);
             scatter_d(slots, a16, k_of, bm);
           });
}

void mma_sp_m16n8k32(Dtype type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e,
                     int selector) {
  if (selector != 0 && selector != 1) {
    fault(cudaErrorIllegalInstruction, "mma.sp.m16n8k32: sparsity selector %d is not 0 or 1", selector);
  }
  MmaSlot slot{d, a, b, e};
  warp_mma(type == Dtype::kF16 ? "mma.sp.m16n8k32.f16" : "mma.sp.m16n8k32.bf16",
           static_cast<int>(type) * 2 + selector, &slot, [](void** slots, int param) {
             const Dtype t = static_cast<Dtype>(param / 2);
             const int sel = param % 2;
             const char* what = t == Dtype::kF16 ? "mma.sp.m16n8k32.f16" : "mma.sp.m16n8k32.bf16";
             float stored[16][16];
             gather_a16(slots, t, stored);
             // Row r's metadata: lane 4 (r % 8) + 2 sel + h holds K columns 16h..16h+15, row r in bits 0-15 when
             // r < 8 and bits 16-31 otherwise, chunk q (4 columns) in bits 4q..4q+3 of that half; stored values
             // 8h + 2q and 8h + 2q + 1 are the chunk's entries at its two indices.
             int k_of[16][16];
             for (int r = 0; r < 16; ++r) {
               for (int h = 0; h < 2; ++h) {
                 const int lane = 4 * (r % 8) + 2 * sel + h;
                 const uint32_t e = static_cast<MmaSlot*>(slots[lane])->e;
                 for (int q = 0; q < 4; ++q) {
                   const int bit = 16 * (r / 8) + 4 * q;
                   int idx[2];
                   decode_nibble((e >> bit) & 0xfu, what, lane, bit, r, 16 * h + 4 * q, idx);
                   for (int z = 0; z < 2; ++z) {
                     k_of[r][8 * h + 2 * q + z] = 16 * h + 4 * q + idx[z];
                   }
                 }
               }
             }
             float bm[32][8];
             gather_b(slots, t, 32, bm);
             scatter_d(slots, stored, k_of, bm);
           });
}

// ---- wgmma -------------------------------------------------------------------------------------------------

void wgmma_fence() {
  const char* what = "wgmma.fence";
  require_sm90(what);
  Worker& w = worker(what);
  Thread& t = *w.current;
  Warpgroup& wg = warpgroup_of(w, t, what);
  if (void** slots = arrive(wg.group, t.linear % 128, all_members(128), what, 0, nullptr)) {
    wg.fenced = true;
    finish_collective(wg.group, slots);
  }
}

void wgmma_commit_group() {
  const char* what = "wgmma.commit_group";
  require_sm90(what);
  Worker& w = worker(what);
  Thread& t = *w.current;
  Warpgroup& wg = warpgroup_of(w, t, what);
  if (void** slots = arrive(wg.group, t.linear % 128, all_members(128), what, 0, nullptr)) {
    wg.committed.push_back(std::move(wg.uncommitted));
    wg.uncommitted.clear();
    finish_collective(wg.group, slots);
  }
}

void wgmma_wait_group(int n) {
  const char* what = "wgmma.wait_group";
  require_sm90(what);
  Worker& w = worker(what);
  Thread& t = *w.current;
  Warpgroup& wg = warpgroup_of(w, t, what);
  if (void** slots = arrive(wg.group, t.linear % 128, all_members(128), what, n, nullptr)) {
    while (static_cast<int>(wg.committed.size()) > n) {
      std::vector<WgmmaOp*> group = std::move(wg.committed.front());
      wg.committed.pop_front();
      // Operands must not have changed while in flight; results go to registers no later wgmma still owns.
      for (WgmmaOp* op : group) {
        for (const Snapshot& s : op->reads) {
          if (std::memcmp(w.window + s.offset, s.bytes.data(), 16) != 0) {
            fault(cudaErrorLaunchFailure,
                  "wgmma.mma_async: operand %s at shared offset 0x%x (dynamic shared memory byte %zu) changed while "
                  "the wgmma was in flight (before the wgmma.wait_group that covers it)",
                  s.operand, s.offset, static_cast<size_t>(s.offset) - w.launch->dyn_offset);
          }
        }
      }
      for (WgmmaOp* op : group) {
        for (int m = 0; m < 128; ++m) {
          float* d = op->d[static_cast<size_t>(m)];
          if (pending_on(wg, m, d) != nullptr) {
            continue;  // a later wgmma on these registers is still in flight: they stay its
          }
          for (int j = 0; j < op->regs; ++j) {
            if (!is_acc_poison(d[j])) {
              fault(cudaErrorLaunchFailure,
                    "wgmma.mma_async: accumulator register %d of warpgroup thread %d was written while the wgmma was "
                    "in flight",
                    j, m);
            }
          }
        }
      }
      for (WgmmaOp* op : group) {
        for (int m = 0; m < 128; ++m) {
          float* d = op->d[static_cast<size_t>(m)];
          if (pending_on(wg, m, d) != nullptr) {
            continue;
          }
          std::memcpy(d, &op->result[static_cast<size_t>(m) * op->regs], sizeof(float) * op->regs);
        }
      }
      for (WgmmaOp* op : group) {
        wg.free_ops.push_back(op);
      }
    }
    wg.fenced = false;
    finish_collective(wg.group, slots);
  }
}

void wgmma_mma_async_sp(Dtype type, int n, float* d, uint64_t a_desc, uint64_t b_desc, uint32_t e, int selector,
                        uint32_t scale_d) {
  wgmma_common(type, n, d, nullptr, a_desc, b_desc, e, selector, scale_d, true,
               type == Dtype::kF16 ? "wgmma.mma_async.sp.f16" : "wgmma.mma_async.sp.bf16");
}

void wgmma_mma_async(Dtype type, int n, float* d, uint64_t a_desc, uint64_t b_desc, uint32_t scale_d) {
  wgmma_common(type, n, d, nullptr, a_desc, b_desc, 0, 0, scale_d, false,
               type == Dtype::kF16 ? "wgmma.mma_async.f16" : "wgmma.mma_async.bf16");
}

void wgmma_mma_async_rs(Dtype type, int n, float* d, const uint32_t (&a_regs)[4], uint64_t b_desc,
                        uint32_t scale_d) {
  wgmma_common(type, n, d, a_regs, 0, b_desc, 0, 0, scale_d, false,
               type == Dtype::kF16 ? "wgmma.mma_async.f16 (A in registers)"
                                   : "wgmma.mma_async.bf16 (A in registers)");
}

}  // namespace emu
}  // namespace perfkern
