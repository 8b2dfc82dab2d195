// Host emulation of the Hopper sparse GEMM's data movement (csrc/sparse24/wgmma_layout.cuh): builds each
// pipeline stage's shared-memory image with the kernel's own load maps, then executes
// wgmma.mma_async.sp m64nNk32 (16-bit, sparsity selector 0, both operands K-major in the 128-byte
// swizzle mode) as the PTX ISA describes it: operands addressed through the matrix descriptors the
// kernel builds, metadata taken from the lanes the selector names, results placed by the accumulator
// map. Every metadata nibble the instruction reads must be valid (ordered indices), padding included. The
// product must equal the dense reference exactly (small integers). Prints "ok <cases>" or
// the first mismatch, and exits non-zero on failure.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "sparse24/wgmma_layout.cuh"

namespace wg = perfkern::sparse24::wgmma;
namespace mma = perfkern::sparse24::mma;

namespace {

uint16_t bf16_bits(float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  return static_cast<uint16_t>(u >> 16);  // exact for the small integers used here
}

float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float v;
  memcpy(&v, &u, 4);
  return v;
}

struct Problem {
  int64_t m, n, k;
  std::vector<uint16_t> x;       // [m, k]
  std::vector<uint16_t> values;  // [n, k/2]
  std::vector<uint16_t> meta;    // canonical [n, k/16]
  std::vector<uint32_t> meta_mma;
  std::vector<float> dense_w;    // [n, k]
};

Problem make_problem(int64_t m, int64_t n, int64_t k, std::mt19937& rng) {
  Problem p{m, n, k};
  std::uniform_int_distribution<int> val(-4, 4);
  std::uniform_int_distribution<int> pair(0, 5);
  static const int kPairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
  p.x.resize(m * k);
  for (auto& e : p.x) e = bf16_bits(static_cast<float>(val(rng)));
  p.values.resize(n * k / 2);
  p.meta.assign(n * k / 16, 0);
  p.dense_w.assign(n * k, 0.0f);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t g = 0; g < k / 4; ++g) {
      const int* pr = kPairs[pair(rng)];
      const float v0 = static_cast<float>(val(rng));
      const float v1 = static_cast<float>(val(rng));
      p.values[r * (k / 2) + 2 * g] = bf16_bits(v0);
      p.values[r * (k / 2) + 2 * g + 1] = bf16_bits(v1);
      p.meta[r * (k / 16) + g / 4] |= static_cast<uint16_t>((pr[0] | (pr[1] << 2)) << (4 * (g % 4)));
      p.dense_w[r * k + 4 * g + pr[0]] = v0;
      p.dense_w[r * k + 4 * g + pr[1]] = v1;
    }
  }
  const int64_t meta_cols = k / 16;
  p.meta_mma.resize(mma::meta_mma_size(n, meta_cols) / 2);
  for (int64_t i = 0; i < mma::meta_to_mma_items(n, meta_cols); ++i) {
    mma::meta_to_mma_item(p.meta.data(), p.meta_mma.data(), n, meta_cols, i);
  }
  return p;
}

// One 16-byte chunk copy of the kernel's load_stage: zeros for a missing source.
void copy_chunk(std::vector<unsigned char>& stage, const wg::LoadTask& t, const uint16_t* base) {
  if (t.valid) {
    memcpy(stage.data() + t.dst, base + t.src, 16);
  } else {
    memset(stage.data() + t.dst, 0, 16);
  }
}

uint16_t read_sw128(const std::vector<unsigned char>& stage, uint64_t desc, int row, int byte_in_row) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
  const uint32_t addr = start + (row / 8) * sbo + (row % 8) * 128 + byte_in_row;
  const uint32_t phys = addr ^ (((addr >> 7) & 7) << 4);
  uint16_t v;
  memcpy(&v, stage.data() + phys, 2);
  return v;
}

template <class Cfg>
int check(const Problem& p, int64_t tile_n, int64_t tile_m) {
  const int64_t n0 = tile_n * Cfg::BN;
  const int64_t m0 = tile_m * Cfg::BM;
  std::vector<float> d(static_cast<size_t>(Cfg::BN) * Cfg::BM, 0.0f);  // out^T tile [BN][BM]
  const int64_t k_tiles = (p.k + Cfg::BK - 1) / Cfg::BK;
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    std::vector<unsigned char> stage(Cfg::kStageBytes, 0xAB);  // garbage where nothing is written
    using L = wg::StageLoads<Cfg>;
    for (int v = 0; v < L::kVal; ++v) {
      copy_chunk(stage, wg::values_load<Cfg>(v, n0, kt, p.n, p.k, p.k / 2), p.values.data());
    }
    for (int v = 0; v < L::kX; ++v) copy_chunk(stage, wg::x_load<Cfg>(v, m0, kt, p.m, p.k, p.k), p.x.data());
    for (int v = 0; v < L::kMeta; ++v) {
      const wg::LoadTask t = wg::meta_load<Cfg>(v, n0, kt, p.n, p.k);
      const uint32_t pad[4] = {wg::kPadMetaWord, wg::kPadMetaWord, wg::kPadMetaWord, wg::kPadMetaWord};
      memcpy(stage.data() + t.dst, t.valid ? static_cast<const void*>(p.meta_mma.data() + t.src) : pad, 16);
    }
    for (int wgi = 0; wgi < Cfg::kWarpgroups; ++wgi) {
      for (int s = 0; s < Cfg::kSteps; ++s) {
        const uint64_t a_desc = wg::sw128_desc(static_cast<uint32_t>(wg::a_desc_offset<Cfg>(wgi, s)));
        const uint64_t b_desc = wg::sw128_desc(static_cast<uint32_t>(wg::b_desc_offset<Cfg>(s)));
        if ((a_desc >> 62) != 1 || (b_desc >> 62) != 1 || ((a_desc >> 32) & 0x3FFF) != 64) {
          printf("FAIL descriptor fields\n");
          return 1;
        }
        // Registers of the warpgroup's 128 threads: the metadata word each one loads.
        uint32_t e[128];
        for (int t = 0; t < 128; ++t) {
          const wg::MetaSlot slot = wg::meta_slot(wgi, t / 32, t % 32);
          memcpy(&e[t], stage.data() + wg::meta_smem_offset<Cfg>(slot.block, s) + 4 * slot.word, 4);
        }
        for (int w = 0; w < 4; ++w) {
          for (int lane = 0; lane < 32; ++lane) {
            if (e[32 * w + lane] != e[32 * w + (lane ^ 2)]) {
              printf("FAIL lanes %d and %d of warp %d hold different metadata\n", lane, lane ^ 2, w);
              return 1;
            }
          }
        }
        for (int i = 0; i < 64; ++i) {
          const int w = i / 16;
          const int g = i % 8;
          const int hi = (i % 16) / 8;
          for (int h = 0; h < 2; ++h) {  // K half of the k32 step
            const uint32_t word = e[32 * w + 4 * g + h];  // selector 0: lanes 4g, 4g+1
            for (int q = 0; q < 4; ++q) {
              const uint32_t nib = (word >> (16 * hi + 4 * q)) & 0xF;
              const int idx[2] = {static_cast<int>(nib & 3), static_cast<int>(nib >> 2)};
              if (idx[0] >= idx[1]) {  // ordered metadata: the hardware's behaviour is undefined otherwise
                printf("FAIL invalid metadata nibble 0x%x for row %d, k32 step %d, columns %d..%d\n", nib,
                       64 * wgi + i, s, 16 * h + 4 * q, 16 * h + 4 * q + 3);
                return 1;
              }
              for (int z = 0; z < 2; ++z) {
                const int stored_col = 8 * h + 2 * q + z;
                const float av = bf16_value(read_sw128(stage, a_desc, i, 2 * stored_col));
                const int kk = 16 * h + 4 * q + idx[z];
                for (int j = 0; j < Cfg::BM; ++j) {
                  const float bv = bf16_value(read_sw128(stage, b_desc, j, 2 * kk));
                  d[(64 * wgi + i) * Cfg::BM + j] += av * bv;
                }
              }
            }
          }
        }
      }
    }
  }
  // Accumulator map: every (row, column) of each warpgroup's 64 x BM tile is held exactly once.
  std::vector<int> seen(static_cast<size_t>(64) * Cfg::BM, 0);
  for (int w = 0; w < 4; ++w)
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < Cfg::kAcc; ++j) {
        const wg::AccPos pos = wg::acc_pos(w, lane, j);
        seen[pos.n * Cfg::BM + pos.m] += 1;
      }
  for (int v : seen) {
    if (v != 1) {
      printf("FAIL accumulator map is not a bijection\n");
      return 1;
    }
  }
  for (int64_t i = 0; i < Cfg::BN; ++i) {
    for (int64_t j = 0; j < Cfg::BM; ++j) {
      const int64_t row = n0 + i;
      const int64_t col = m0 + j;
      if (row >= p.n || col >= p.m) continue;
      float ref = 0.0f;
      for (int64_t kk = 0; kk < p.k; ++kk) ref += p.dense_w[row * p.k + kk] * bf16_value(p.x[col * p.k + kk]);
      if (ref != d[i * Cfg::BM + j]) {
        printf("FAIL n=%lld m=%lld k=%lld tile (%lld, %lld): out[%lld, %lld] = %g, expected %g\n",
               (long long)p.n, (long long)p.m, (long long)p.k, (long long)tile_n, (long long)tile_m,
               (long long)col, (long long)row, d[i * Cfg::BM + j], ref);
        return 1;
      }
    }
  }
  return 0;
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const int64_t shapes[][3] = {{64, 64, 128}, {70, 96, 160}, {128, 128, 256},
                               {9, 200, 96},  {130, 64, 32}, {1, 40, 384}};
  int cases = 0;
  for (const auto& s : shapes) {
    const Problem p = make_problem(s[0], s[1], s[2], rng);
    for (int64_t tn = 0; tn * wg::TileConfig<2, 128, 4>::BN < p.n; ++tn)
      for (int64_t tm = 0; tm * 128 < p.m; ++tm) {
        if (check<wg::TileConfig<2, 128, 4>>(p, tn, tm) != 0) return 1;
        ++cases;
      }
    for (int64_t tn = 0; tn * 64 < p.n; ++tn)
      for (int64_t tm = 0; tm * 64 < p.m; ++tm) {
        if (check<wg::TileConfig<1, 64, 4>>(p, tn, tm) != 0) return 1;
        ++cases;
      }
  }
  printf("ok %d\n", cases);
  return 0;
}
