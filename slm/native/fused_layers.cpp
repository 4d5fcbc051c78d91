// The decoding step's layer loop of slm.generate.FusedStep in C++, for int8 weight-only matrices on CPU (with their
// bf16 copies for passes of more than max_rows rows, where the layers have them).
//
// Why: at a few rows per step the Python loop spends ~40% of a SmolLM2-135M step on ~30 small torch calls
// per layer (norms, rotary, casts, K/V writes), each a Python call plus an op dispatch. Here everything between
// the int8 matmuls and the attention is plain loops over the few rows. On CPUs with AVX512-VNNI the matmuls and
// the attention are this file's own kernels (int8_matmul, attend_avx512: docs/results/vnni_step; the matmul on
// AMX tiles where the CPU has them: docs/results/amx_step); elsewhere
// torch's (at::_weight_int8pack_mm, at::scaled_dot_product_attention, called as the Python loop calls them).
//
// The arithmetic mirrors FusedStep.layers_forward operation by operation (fp32 residual stream; the matrices'
// inputs rounded to bf16, their bf16 outputs widened exactly; rotary as q*cos + rotate_half(q)*sin), so the
// hidden states agree with it to float rounding (the norm's and silu's own rounding; tests compare).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define SLM_X86 1
#endif

namespace {

using at::Tensor;
using bf16 = c10::BFloat16;

// ---- int8 weight x bf16 activation matmul through AVX512-VNNI -----------------------------------------------
//
// What at::_weight_int8pack_mm computes (y = (x . w) * scale per output row, x bf16 [rows, K], w int8 [N, K],
// scale bf16 [N], y bf16), faster at the few rows a decoding step has. That kernel widens every weight to fp32
// and multiplies in fp32: ~3 vector instructions per 16 weights, which at one or two rows leaves it neither
// compute- nor memory-bound (SmolLM2-135M's 106 MB of int8 weights in ~8.5 ms on 2 Xeon cores, ~12 GB/s).
//
// Here each activation row becomes a 24-bit fixed-point integer X = x * 2^(23-e) (2^e > max|x|; exact for
// every bf16 value within 2^-15 of the row's largest, rounded below that), split into three unsigned bytes of
// X + 2^23. vpdpbusd multiplies 64 such bytes by 64 int8 weights per instruction, so a 64-weight chunk takes
// one load and three vpdpbusd per row; the integer dot product is exact, and its offset (2^23 * sum(w)) comes
// off with the row sums of w (wsum). With the weights prefetched ~16 KB ahead the kernel runs near memory speed
// (~3.5 ms for the same 106 MB; docs/results/native_step). Results agree with at::_weight_int8pack_mm to the
// output's bf16 rounding (that kernel sums in fp32; this one exactly).
//
// Used where the CPU has AVX512-VNNI (checked at run time) and K is a multiple of 64; elsewhere, or where a row
// holds a non-finite value, at::_weight_int8pack_mm.
constexpr int64_t kPrefetch = 16 * 1024;  // bytes ahead of the weights being read

#ifdef SLM_X86
#define SLM_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

// NB output rows x MB activation rows over the whole K; act [MB][3][K] bytes (the high, middle, low bytes).
template <int NB, int MB>
SLM_VNNI inline void vnni_block(const uint8_t* act, int64_t K, const int8_t* w, const int32_t* wsum,
                                const bf16* scale, const double* xs, float* out, int64_t ldo) {
  __m512i acc[NB][MB][3];
  for (int j = 0; j < NB; ++j)
    for (int m = 0; m < MB; ++m)
      for (int l = 0; l < 3; ++l) acc[j][m][l] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 64) {
    __m512i a[MB][3];
    for (int m = 0; m < MB; ++m)
      for (int l = 0; l < 3; ++l) a[m][l] = _mm512_loadu_si512(act + (m * 3 + l) * K + k);
    for (int j = 0; j < NB; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(w + j * K + k + kPrefetch), _MM_HINT_T0);
      const __m512i wv = _mm512_loadu_si512(w + j * K + k);
      for (int m = 0; m < MB; ++m)
        for (int l = 0; l < 3; ++l) acc[j][m][l] = _mm512_dpbusd_epi32(acc[j][m][l], a[m][l], wv);
    }
  }
  for (int j = 0; j < NB; ++j) {
    const double s = static_cast<double>(static_cast<float>(scale[j]));
    for (int m = 0; m < MB; ++m) {
      const int64_t t = static_cast<int64_t>(_mm512_reduce_add_epi32(acc[j][m][0])) * 65536 +
                        static_cast<int64_t>(_mm512_reduce_add_epi32(acc[j][m][1])) * 256 +
                        _mm512_reduce_add_epi32(acc[j][m][2]) - (static_cast<int64_t>(wsum[j]) << 23);
      out[m * ldo + j] = static_cast<float>(static_cast<double>(t) * xs[m] * s);
    }
  }
}

// out[rows, n0:n1] for one range of output rows: blocks of 4 output rows, activation rows 4, 2, 1 at a time
// (the weights of a block stay in L1 across them).
SLM_VNNI void vnni_range(const uint8_t* act, const double* xs, int64_t rows, int64_t K, const int8_t* w,
                         const int32_t* wsum, const bf16* scale, float* out, int64_t N, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    int64_t m = 0;
    for (; m + 4 <= rows; m += 4)
      for (int j = 0; j < 4; ++j)
        vnni_block<1, 4>(act + m * 3 * K, K, w + (n + j) * K, wsum + n + j, scale + n + j, xs + m,
                         out + m * N + n + j, N);
    for (; m + 2 <= rows; m += 2) {
      vnni_block<2, 2>(act + m * 3 * K, K, w + n * K, wsum + n, scale + n, xs + m, out + m * N + n, N);
      vnni_block<2, 2>(act + m * 3 * K, K, w + (n + 2) * K, wsum + n + 2, scale + n + 2, xs + m,
                       out + m * N + n + 2, N);
    }
    if (m < rows) vnni_block<4, 1>(act + m * 3 * K, K, w + n * K, wsum + n, scale + n, xs + m, out + m * N + n, N);
  }
  for (; n < n1; ++n)
    for (int64_t m = 0; m < rows; ++m)
      vnni_block<1, 1>(act + m * 3 * K, K, w + n * K, wsum + n, scale + n, xs + m, out + m * N + n, N);
}

// ---- the same matmul through AMX (Sapphire Rapids and later) -------------------------------------------------
//
// Same fixed-point bytes, same exact integer sums, so the outputs are bit for bit those of vnni_range; only the
// multiplier differs. One tdpbsud multiplies a 16 x 64 tile of signed bytes (here 16 output rows of w, read in
// place with stride K: no repacking) by a 64 x 16 tile of unsigned bytes (here the activation bytes: up to 5
// rows x 3 bytes = 15 columns, packed per call in AMX's k-quad layout) into 16 x 16 int32 sums. That is 16K
// multiply-adds an instruction against vpdpbusd's 1K, so at 2-20 rows the kernel stays at memory speed where
// the VNNI one becomes compute-bound (3 vpdpbusd per row per 64 weights). Needs the kernel's permission for
// the tile state (arch_prctl ARCH_REQ_XCOMP_PERM), asked for once; refused or absent: vnni_range.
#define SLM_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8")))
constexpr int64_t kAmxRows = 5;    // activation rows per tile of sums (3 bytes each: 15 of its 16 columns)
constexpr int64_t kAmxGroups = 4;  // tiles of sums per pass over the weights (tmm0-3; tmm4-7 the loads)

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Each row of x [rows, K] (K a multiple of 16) as the three bytes of X + 2^23, X = x * 2^(23-e) rounded to an
// integer (2^e > max|x|; exact in float: x has 8 significant bits and |X| < 2^23), and its step 2^(e-23) (xs; 0
// for an all-zero row). The bytes go to act [rows][3][K] (the VNNI kernel's layout) or, where act is null, to
// packed [groups][K/64][16 k-quads][16 columns x 4 bytes] (AMX's: k at (k / 4) * 64 + k % 4 of its column,
// column 3 * (row % kAmxRows) + byte; the caller passes it zeroed, which the unused columns stay). False where a
// row holds a non-finite value (the caller then uses torch's kernel).
SLM_VNNI inline __m512i bf16_bits(const bf16* p) {  // 16 bf16 -> their fp32 bits
  return _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
}

SLM_VNNI bool fixed_point_rows(const bf16* x, int64_t rows, int64_t K, uint8_t* act, uint8_t* packed, double* xs) {
  const __m512i exp_mask = _mm512_set1_epi32(0x7f800000), abs_mask = _mm512_set1_epi32(0x7fffffff);
  for (int64_t m = 0; m < rows; ++m) {
    const bf16* r = x + m * K;
    __m512i mx = _mm512_setzero_si512();  // max |x| as bits (order-preserving for non-negative floats)
    __mmask16 bad = 0;
    for (int64_t k = 0; k < K; k += 16) {
      const __m512i v = _mm512_and_si512(bf16_bits(r + k), abs_mask);
      bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(v, exp_mask), exp_mask);
      mx = _mm512_max_epu32(mx, v);
    }
    if (bad) return false;
    const uint32_t mbits = _mm512_reduce_max_epu32(mx);
    float mxf;
    std::memcpy(&mxf, &mbits, 4);
    int e = 0;
    if (mxf != 0) std::frexp(mxf, &e);  // mx < 2^e
    if (e < -100) return false;          // a row below 2^-100 (2^(23-e) would overflow a float): torch's kernel
    xs[m] = mxf == 0 ? 0 : std::ldexp(1.0, e - 23);
    const __m512 up = _mm512_set1_ps(mxf == 0 ? 0.f : std::ldexp(1.f, 23 - e));
    const __m512i off = _mm512_set1_epi32(1 << 23);
    uint8_t* planes[3];
    for (int l = 0; l < 3; ++l) planes[l] = act ? act + (m * 3 + l) * K
                                                : packed + (m / kAmxRows) * K * 16 + ((m % kAmxRows) * 3 + l) * 4;
    for (int64_t k = 0; k < K; k += 16) {
      const __m512 xf = _mm512_castsi512_ps(bf16_bits(r + k));
      const __m512i U = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(xf, up)), off);  // nearest, ties even
      const __m128i b[3] = {_mm512_cvtepi32_epi8(_mm512_srli_epi32(U, 16)),
                            _mm512_cvtepi32_epi8(_mm512_srli_epi32(U, 8)), _mm512_cvtepi32_epi8(U)};
      for (int l = 0; l < 3; ++l) {
        if (act) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[l] + k), b[l]);
        } else {
          uint8_t* d = planes[l] + k * 16;  // k-quads k/4 .. k/4+3, 64 bytes apart
          const int32_t q0 = _mm_cvtsi128_si32(b[l]), q1 = _mm_extract_epi32(b[l], 1),
                        q2 = _mm_extract_epi32(b[l], 2), q3 = _mm_extract_epi32(b[l], 3);
          std::memcpy(d, &q0, 4);
          std::memcpy(d + 64, &q1, 4);
          std::memcpy(d + 128, &q2, 4);
          std::memcpy(d + 192, &q3, 4);
        }
      }
    }
  }
  return true;
}

// one 64-byte chunk c of K for 16 output rows and G groups of activation rows: weights into tile TA, activation
// bytes into TB (two sets, alternated chunk by chunk, so a chunk's loads need not wait for the last one's
// multiplications to have read their tiles), sums into tmm0..G-1. A macro: the tile intrinsics take literal
// register numbers.
#define SLM_AMX_CHUNK(C, TA, TB)                                                           \
  {                                                                                        \
    const int64_t c = C;                                                                   \
    const char* pf = reinterpret_cast<const char*>(w) + c * 1024 + kPrefetch;              \
    for (int i = 0; i < 16; ++i) _mm_prefetch(pf + i * 64, _MM_HINT_T1);                   \
    _tile_loadd(TA, w + c * 64, K);                                                        \
    _tile_loadd(TB, packed + c * 1024, 64);                                                \
    _tile_dpbsud(0, TA, TB);                                                               \
    if constexpr (G > 1) {                                                                 \
      _tile_loadd(TB, packed + (chunks + c) * 1024, 64);                                   \
      _tile_dpbsud(1, TA, TB);                                                             \
    }                                                                                      \
    if constexpr (G > 2) {                                                                 \
      _tile_loadd(TB, packed + (2 * chunks + c) * 1024, 64);                               \
      _tile_dpbsud(2, TA, TB);                                                             \
    }                                                                                      \
    if constexpr (G > 3) {                                                                 \
      _tile_loadd(TB, packed + (3 * chunks + c) * 1024, 64);                               \
      _tile_dpbsud(3, TA, TB);                                                             \
    }                                                                                      \
  }

// sums of 16 output rows for G groups of activation rows over the whole K, the weights read once (the block
// is 16 * K contiguous bytes: its prefetch runs along them ~16 KB ahead, into L2)
template <int G>
SLM_AMX inline void amx_block(const uint8_t* packed, int64_t chunks, const int8_t* w, int64_t K) {
  int64_t c0 = 0;
  for (; c0 + 2 <= chunks; c0 += 2) {
    SLM_AMX_CHUNK(c0, 4, 5)
    SLM_AMX_CHUNK(c0 + 1, 6, 7)
  }
  if (c0 < chunks) SLM_AMX_CHUNK(c0, 4, 5)
}
#undef SLM_AMX_CHUNK

// out[rows, n0:n1] for a range of output rows that is a multiple of 16 (the caller's blocks); rows in passes of
// up to kAmxGroups * kAmxRows over the weights
SLM_AMX void amx_range(const uint8_t* packed, const double* xs, int64_t rows, int64_t K, const int8_t* w,
                       const int32_t* wsum, const bf16* scale, float* out, int64_t N, int64_t n0, int64_t n1) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  _tile_loadconfig(&cfg);
  const int64_t chunks = K / 64, groups = (rows + kAmxRows - 1) / kAmxRows;
  alignas(64) int32_t sums[kAmxGroups][16][16];
  for (int64_t n = n0; n < n1; n += 16) {
    for (int64_t g0 = 0; g0 < groups; g0 += kAmxGroups) {
      const int64_t G = std::min(kAmxGroups, groups - g0);
      const uint8_t* pk = packed + g0 * chunks * 1024;
      _tile_zero(0);
      if (G > 1) _tile_zero(1);
      if (G > 2) _tile_zero(2);
      if (G > 3) _tile_zero(3);
      if (G == 1) amx_block<1>(pk, chunks, w + n * K, K);
      else if (G == 2) amx_block<2>(pk, chunks, w + n * K, K);
      else if (G == 3) amx_block<3>(pk, chunks, w + n * K, K);
      else amx_block<4>(pk, chunks, w + n * K, K);
      _tile_stored(0, sums[0], 64);
      if (G > 1) _tile_stored(1, sums[1], 64);
      if (G > 2) _tile_stored(2, sums[2], 64);
      if (G > 3) _tile_stored(3, sums[3], 64);
      // y = (hi * 2^16 + mid * 2^8 + lo - 2^23 * wsum) * xs * scale for the block's 16 outputs, 8 at a time in
      // double (every term and partial sum an integer below 2^53: exact, as vnni_block's int64 sum)
      const __m512i col = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(16));
      const __m512i ws16 = _mm512_loadu_si512(wsum + n);
      const __m512 sc16 = _mm512_castsi512_ps(bf16_bits(scale + n));
      for (int64_t g = 0; g < G; ++g)
        for (int64_t r = 0; r < kAmxRows && (g0 + g) * kAmxRows + r < rows; ++r) {
          const int64_t m = (g0 + g) * kAmxRows + r;
          __m512i c[3];
          for (int l = 0; l < 3; ++l)
            c[l] = _mm512_i32gather_epi32(_mm512_add_epi32(col, _mm512_set1_epi32(3 * r + l)), &sums[g][0][0], 4);
          const __m512d x = _mm512_set1_pd(xs[m]);
          for (int h = 0; h < 2; ++h) {
            const __m512d hi = _mm512_cvtepi32_pd(h ? _mm512_extracti64x4_epi64(c[0], 1) : _mm512_castsi512_si256(c[0]));
            const __m512d mid = _mm512_cvtepi32_pd(h ? _mm512_extracti64x4_epi64(c[1], 1) : _mm512_castsi512_si256(c[1]));
            const __m512d lo = _mm512_cvtepi32_pd(h ? _mm512_extracti64x4_epi64(c[2], 1) : _mm512_castsi512_si256(c[2]));
            const __m512d ws = _mm512_cvtepi32_pd(h ? _mm512_extracti64x4_epi64(ws16, 1) : _mm512_castsi512_si256(ws16));
            const __m512d sc = _mm512_cvtps_pd(h ? _mm512_extractf32x8_ps(sc16, 1) : _mm512_castps512_ps256(sc16));
            __m512d t = _mm512_fmadd_pd(hi, _mm512_set1_pd(65536.0), _mm512_mul_pd(mid, _mm512_set1_pd(256.0)));
            t = _mm512_add_pd(t, lo);
            t = _mm512_fnmadd_pd(ws, _mm512_set1_pd(8388608.0), t);
            _mm256_storeu_ps(out + m * N + n + 8 * h, _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_mul_pd(t, x), sc)));
          }
        }
    }
  }
  _tile_release();
}

// exp(x) for x <= 0 (softmax after its max is taken off), 16 lanes: x = n ln2 + r with |r| <= ln2/2, exp(r) by
// its Taylor series to r^7 (relative error < 1e-8 there), times 2^n by scalef. Far below -87 it gives 0.
SLM_VNNI inline __m512 exp_neg(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2 in two parts: exact n * hi
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// Attention of one layer for the decoding step: q [B, nh, n, hd] fp32 against the kept keys/values (K/V rows of
// hd floats, row b at k + b * kv_b, head g at + g * max_len * hd), position j of row b's token t seen where
// mask[b|0, 0, t, j] (no mask: every j < span), softmax(q.k / sqrt(hd)) . v, written as bf16 into
// out [B * n, nh * hd]. What at::scaled_dot_product_attention computes here (to float rounding), reading each
// key and value once per kv head for the nh / nkv query heads that share it, with no per-call setup: at one to
// a few queries that setup and the strided reads were most of its time (~2 ms of a SmolLM2 step at 280 positions).
// one (row, kv head) pair of attend_avx512; sc [G * n * span] and acc [hd] scratch. Positions below `shared` are
// read from kb0/vb0 (row 0's, which every row holds alike there), the rest from the row's own kb/vb.
SLM_VNNI void attend_one(const float* q, const float* kb0, const float* vb0, const float* kb, const float* vb,
                         int64_t shared, const bool* mb, int64_t b, int64_t g, int64_t n, int64_t nh, int64_t G,
                         int64_t hd, int64_t span, float* sc, float* acc, bf16* out) {
  const int64_t Q = G * n, C = hd / 16, D = nh * hd;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  auto query = [&](int64_t qi) { return q + ((b * nh + g * G + qi % G) * n + qi / G) * hd; };  // qi = t*G + hh
  auto key = [&](int64_t j) { return (j < shared ? kb0 : kb) + j * hd; };
  auto value = [&](int64_t j) { return (j < shared ? vb0 : vb) + j * hd; };
  for (int64_t j = 0; j < span; ++j) {  // scores, each key read once
    __m512 kr[16];
    const float* kj = key(j);
    const float* kn = key(j + 8);
    for (int64_t c = 0; c < C; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(kn + c * 16), _MM_HINT_T0);
      kr[c] = _mm512_loadu_ps(kj + c * 16);
    }
    for (int64_t qi = 0; qi < Q; ++qi) {
      if (mb && !mb[(qi / G) * span + j]) {
        sc[qi * span + j] = -INFINITY;
        continue;
      }
      const float* qp = query(qi);
      __m512 d = _mm512_mul_ps(kr[0], _mm512_loadu_ps(qp));
      for (int64_t c = 1; c < C; ++c) d = _mm512_fmadd_ps(kr[c], _mm512_loadu_ps(qp + c * 16), d);
      sc[qi * span + j] = _mm512_reduce_add_ps(d) * scale;
    }
  }
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  for (int64_t qi = 0; qi < Q; ++qi) {  // softmax numerators in place; the sum taken below
    float* s = sc + qi * span;
    __m512 mv = ninf;  // the max, 16 lanes at a time (exact in any order)
    for (int64_t j = 0; j < span; j += 16) {
      const __mmask16 lanes = span - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (span - j)) - 1);
      mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(ninf, lanes, s + j));
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
    for (int64_t j = 0; j < span; j += 16) {
      const __mmask16 lanes = span - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (span - j)) - 1);
      const __m512 x = _mm512_maskz_loadu_ps(lanes, s + j);
      const __mmask16 live = _mm512_mask_cmp_ps_mask(lanes, x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
      _mm512_mask_storeu_ps(s + j, lanes, _mm512_maskz_mov_ps(live, exp_neg(_mm512_sub_ps(x, m))));
    }
  }
  for (int64_t q0 = 0; q0 < Q; q0 += 4) {  // weighted values, four queries a pass over them
    const int64_t qn = std::min<int64_t>(4, Q - q0);
    __m512 a[4][16];
    double sum[4] = {0, 0, 0, 0};  // each query's softmax denominator, summed in position order beside the values
    for (int64_t i = 0; i < qn; ++i)
      for (int64_t c = 0; c < C; ++c) a[i][c] = _mm512_setzero_ps();
    for (int64_t j = 0; j < span; ++j) {
      const float* vr = value(j);
      const float* vn = value(j + 8);
      for (int64_t c = 0; c < C; ++c) _mm_prefetch(reinterpret_cast<const char*>(vn + c * 16), _MM_HINT_T0);
      for (int64_t i = 0; i < qn; ++i) {
        const float pj = sc[(q0 + i) * span + j];
        if (pj == 0.f) continue;
        sum[i] += pj;
        const __m512 pv = _mm512_set1_ps(pj);
        for (int64_t c = 0; c < C; ++c) a[i][c] = _mm512_fmadd_ps(pv, _mm512_loadu_ps(vr + c * 16), a[i][c]);
      }
    }
    for (int64_t i = 0; i < qn; ++i) {
      const int64_t qi = q0 + i, t = qi / G, h = g * G + qi % G;
      const __m512 inv = _mm512_set1_ps(static_cast<float>(1.0 / sum[i]));
      for (int64_t c = 0; c < C; ++c) _mm512_storeu_ps(acc + c * 16, _mm512_mul_ps(a[i][c], inv));
      bf16* o = out + (b * n + t) * D + h * hd;
      for (int64_t d = 0; d < hd; ++d) o[d] = bf16(acc[d]);
    }
  }
}

// The (row, kv head) pairs run kv head by kv head, so that where the rows share their first `shared` positions
// (best-of candidates after one prompt: slm.generate._FusedBatch) those keys and values come from memory once for
// every row of a head and from the core's cache for the next rows (row 0's copy is read for all of them). Each
// pair's arithmetic is the same whatever `shared` is, so the output bits are too.
void attend_avx512(const float* q, const float* k, const float* v, const bool* mask, int64_t mask_b, int64_t B,
                   int64_t n, int64_t nh, int64_t nkv, int64_t hd, int64_t max_len, int64_t span, int64_t kv_b,
                   int64_t shared, bf16* out) {
  const int64_t G = nh / nkv;
  at::parallel_for(0, B * nkv, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> sc(G * n * span), acc(hd);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t g = task / B, b = task % B, head = g * max_len * hd;
      attend_one(q, k + head, v + head, k + b * kv_b + head, v + b * kv_b + head, shared,
                 mask ? mask + (mask_b > 1 ? b : 0) * n * span : nullptr, b, g, n, nh, G, hd, span, sc.data(),
                 acc.data(), out);
    }
  });
}

bool cpu_has_vnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
  }();
  return has;
}
// AMX-INT8 on the CPU and the tile state granted by the kernel (asked for once per process)
bool cpu_has_amx() {
  static const bool has = [] {
    if (!cpu_has_vnni()) return false;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25))) return false;
    constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;  // asm/prctl.h, the tile data state component
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
  }();
  return has;
}
#else
bool cpu_has_vnni() { return false; }
bool cpu_has_amx() { return false; }
#endif

// SLM_NATIVE_AMX=0: the VNNI kernel where AMX is there too (read at every call, for side-by-side measurements)
bool amx_enabled() {
  const char* e = std::getenv("SLM_NATIVE_AMX");
  return cpu_has_amx() && !(e && std::string(e) == "0");
}

// y = x . w^T * scale: x bf16 [rows, K], w int8 [N, K], scale bf16 [N], wsum int32 [N] (w's row sums; undefined:
// torch's kernel) -> bf16 [rows, N].
Tensor int8_matmul(const Tensor& x, const Tensor& w, const Tensor& scale, const Tensor& wsum) {
  const int64_t rows = x.size(0), K = x.size(1), N = w.size(0);
#ifdef SLM_X86
  if (wsum.defined() && cpu_has_vnni() && K % 64 == 0 && rows > 0 && x.is_contiguous() && w.is_contiguous() &&
      x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kChar && scale.scalar_type() == at::kBFloat16 &&
      wsum.scalar_type() == at::kInt && w.size(1) == K && scale.numel() == N && wsum.numel() == N) {
    // AMX from two rows up (at one both run at memory speed), in blocks of 16 output rows
    // (a tile's int32 sums hold K * 255 * 128 up to K = 65792)
    const bool amx = rows > 1 && N % 16 == 0 && K <= 65536 && amx_enabled();
    const int64_t groups = (rows + kAmxRows - 1) / kAmxRows;
    std::vector<uint8_t> act(amx ? 0 : rows * 3 * K), packed(amx ? groups * K * 16 : 0);  // zeroed
    std::vector<double> xs(rows);
    if (fixed_point_rows(x.data_ptr<bf16>(), rows, K, amx ? nullptr : act.data(), packed.data(), xs.data())) {
      Tensor out = at::empty({rows, N}, x.options().dtype(at::kFloat));
      const int8_t* wp = w.data_ptr<int8_t>();
      const int32_t* ws = wsum.data_ptr<int32_t>();
      const bf16* sp = scale.data_ptr<bf16>();
      float* op = out.data_ptr<float>();
      if (amx) {
        at::parallel_for(0, N / 16, 4, [&](int64_t b0, int64_t b1) {
          amx_range(packed.data(), xs.data(), rows, K, wp, ws, sp, op, N, b0 * 16, b1 * 16);
        });
      } else {
        // split the output rows between threads in blocks of 4 (a thread streams one contiguous part of w)
        at::parallel_for(0, (N + 3) / 4, 16, [&](int64_t b0, int64_t b1) {
          vnni_range(act.data(), xs.data(), rows, K, wp, ws, sp, op, N, b0 * 4, std::min(N, b1 * 4));
        });
      }
      return out.to(at::kBFloat16);
    }
  }
#endif
  return at::_weight_int8pack_mm(x, w, scale);
}

Tensor int8_mm_op(const Tensor& x, const Tensor& w, const Tensor& scale, const Tensor& wsum) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1) && x.device().is_cpu(),
              "int8_mm: x [rows, K] and w [N, K] on CPU");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kChar && scale.scalar_type() == at::kBFloat16
                  && wsum.scalar_type() == at::kInt && scale.numel() == w.size(0) && wsum.numel() == w.size(0),
              "int8_mm: x bf16, w int8, scale bf16 [N], wsum int32 [N]");
  return int8_matmul(x.contiguous(), w.contiguous(), scale, wsum);
}

// SLM_NATIVE_SDPA=1: torch's SDPA inside the loop instead (read at every call, for side-by-side measurements)
bool own_attention_enabled() {
  const char* e = std::getenv("SLM_NATIVE_SDPA");
  return !(e && std::string(e) == "1");
}

std::string int8_kernel() { return amx_enabled() ? "amx" : cpu_has_vnni() ? "avx512-vnni" : "torch"; }

// y = x * rsqrt(mean(x^2) + eps) * w per row of the residual stream [rows, D], rounded to bf16 into out (the
// int8 kernel's input). The sum of squares runs in double: torch's rms_norm (the Python loop's) sums in float
// in an order that depends on the CPU's vector width, so the two agree to float rounding, not bit for bit;
// calling torch's own from here cost more than the rest of this loop together (~1.5 ms a SmolLM2 step).
void rms_norm_bf16(const float* x, const float* w, bf16* out, int64_t rows, int64_t D, double eps) {
  for (int64_t r = 0; r < rows; ++r, x += D, out += D) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(x[d]) * x[d];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(D) + eps));
    for (int64_t d = 0; d < D; ++d) out[d] = bf16((x[d] * inv) * w[d]);
  }
}

Tensor fused_layers(const Tensor& x_in, at::TensorList n1, at::TensorList qkv_w, at::TensorList qkv_s,
                    at::TensorList o_w, at::TensorList o_s, at::TensorList n2, at::TensorList gu_w,
                    at::TensorList gu_s, at::TensorList dn_w, at::TensorList dn_s, at::TensorList qkv_b,
                    at::TensorList o_b, at::TensorList gu_b, at::TensorList dn_b, at::TensorList qkv_ws,
                    at::TensorList o_ws, at::TensorList gu_ws, at::TensorList dn_ws, const Tensor& K, const Tensor& V,
                    const Tensor& pos, const Tensor& cos_tab, const Tensor& sin_tab,
                    const std::optional<Tensor>& mask, int64_t span, int64_t nh, int64_t nkv, double eps_d,
                    int64_t max_rows, int64_t shared) {
  // x_in [B, n, D] fp32; K/V [L, B, nkv, max_len, hd] fp32; pos [B, n] int64 (where each new token goes);
  // cos_tab/sin_tab [max_len, hd] fp32 (the plain rotary tables); mask: SDPA's boolean mask [B|1, 1, n, span]
  // or none (one token per row, attending to every position below span); shared: the first positions, which
  // every row's K/V holds alike (0: none), where the attention reads row 0's copy for all rows.
  TORCH_CHECK(x_in.dim() == 3 && x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(),
              "fused_layers: x must be a float32 CPU tensor [B, n, D]");
  const int64_t B = x_in.size(0), n = x_in.size(1), D = x_in.size(2), rows = B * n, L = n1.size();
  TORCH_CHECK(K.dim() == 5 && K.size(0) == L && K.size(1) == B && K.size(2) == nkv && K.is_contiguous() &&
                  V.sizes() == K.sizes() && V.is_contiguous() && K.scalar_type() == at::kFloat &&
                  V.scalar_type() == at::kFloat,
              "fused_layers: K/V must be contiguous float32 [layers, B, nkv, max_len, hd]");
  const int64_t max_len = K.size(3), hd = K.size(4), half = hd / 2, qw = (nh + 2 * nkv) * hd;
  TORCH_CHECK(nh * hd == D && nh % nkv == 0 && hd % 2 == 0, "fused_layers: head sizes do not fit D");
  TORCH_CHECK(pos.sizes() == at::IntArrayRef({B, n}) && pos.scalar_type() == at::kLong,
              "fused_layers: pos must be int64 [B, n]");
  TORCH_CHECK(cos_tab.dim() == 2 && cos_tab.size(0) == max_len && cos_tab.size(1) == hd &&
                  sin_tab.sizes() == cos_tab.sizes() && cos_tab.is_contiguous() && sin_tab.is_contiguous() &&
                  cos_tab.scalar_type() == at::kFloat && sin_tab.scalar_type() == at::kFloat,
              "fused_layers: rotary tables must be contiguous float32 [max_len, hd]");
  TORCH_CHECK(span >= 1 && span <= max_len, "fused_layers: span out of range");
  for (auto* lst : {&qkv_w, &qkv_s, &o_w, &o_s, &n2, &gu_w, &gu_s, &dn_w, &dn_s})
    TORCH_CHECK(static_cast<int64_t>(lst->size()) == L, "fused_layers: every per-layer list needs one entry a layer");
  // more rows than max_rows: the matrices' bf16 copies (as Int8Linear does above its max_rows)
  const bool bulk = rows > max_rows;
  if (bulk)
    for (auto* lst : {&qkv_b, &o_b, &gu_b, &dn_b})
      TORCH_CHECK(static_cast<int64_t>(lst->size()) == L,
                  "fused_layers: more rows than max_rows need the matrices' bf16 copies");
  // the int8 matrices' row sums (for the VNNI kernel; empty lists: torch's kernel)
  const bool sums = qkv_ws.size() == static_cast<size_t>(L);
  if (sums)
    for (auto* lst : {&o_ws, &gu_ws, &dn_ws})
      TORCH_CHECK(static_cast<int64_t>(lst->size()) == L, "fused_layers: the row sums need one entry a layer");
  auto matmul = [bulk, sums](const Tensor& in, at::TensorList w, at::TensorList s, at::TensorList b,
                             at::TensorList ws, int64_t i) {
    if (bulk) return at::linear(in, b[i]).contiguous();
    return int8_matmul(in, w[i], s[i], sums ? ws[i] : Tensor()).contiguous();
  };
  const int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows; ++i) TORCH_CHECK(p[i] >= 0 && p[i] < max_len, "fused_layers: position out of range");
  TORCH_CHECK(shared >= 0 && shared <= span, "fused_layers: shared must be in 0..span");
  for (int64_t i = 0; i < rows; ++i)
    TORCH_CHECK(p[i] >= shared, "fused_layers: a row writes inside the shared positions (below shared)");

  Tensor x = x_in.contiguous().clone();  // the residual stream [B, n, D]
  float* xs = x.data_ptr<float>();
  auto bopt = at::TensorOptions().dtype(at::kBFloat16);
  auto fopt = at::TensorOptions().dtype(at::kFloat);
  Tensor h = at::empty({rows, D}, bopt);  // a matrix's bf16 input
  Tensor q = at::empty({B, nh, n, hd}, fopt);
  Tensor att_in = at::empty({rows, D}, bopt);
  Tensor g32, act;  // silu's fp32 input and down's bf16 input [rows, I], sized at the first layer
  const float* ct = cos_tab.data_ptr<float>();
  const float* st = sin_tab.data_ptr<float>();
  const int64_t kv_b = nkv * max_len * hd, kv_l = B * kv_b;  // strides of K/V over rows and layers
  float rot[1024];
  TORCH_CHECK(hd <= 1024, "fused_layers: head_dim over 1024");
  // the attention: our own (AVX-512, head_dim a multiple of 16 up to 256, a boolean mask [B|1, 1, n, span] or
  // none) or torch's SDPA
  Tensor mask_c;
  const bool* mask_p = nullptr;
  int64_t mask_b = 1;
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() <= 4 && mask->size(-1) == span &&
                    (mask->dim() < 2 || mask->size(-2) == n || mask->size(-2) == 1),
                "fused_layers: mask must be boolean and broadcast to [B, 1, n, span]");
    mask_c = mask->expand({B, 1, n, span}).contiguous();
    mask_p = mask_c.data_ptr<bool>();
    mask_b = B;
  }
  const bool own_attention = cpu_has_vnni() && hd % 16 == 0 && hd <= 256 && own_attention_enabled();

  for (int64_t i = 0; i < L; ++i) {
    bf16* hp = h.data_ptr<bf16>();
    rms_norm_bf16(xs, n1[i].data_ptr<float>(), hp, rows, D, eps_d);
    Tensor y = matmul(h, qkv_w, qkv_s, qkv_b, qkv_ws, i);  // [rows, (nh + 2 nkv) hd] bf16
    const bf16* yp = y.data_ptr<bf16>();
    float* qp = q.data_ptr<float>();
    float* kl = K.data_ptr<float>() + i * kv_l;
    float* vl = V.data_ptr<float>() + i * kv_l;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < n; ++t) {
        const int64_t at_pos = p[b * n + t];
        const float* c = ct + at_pos * hd;
        const float* s = st + at_pos * hd;
        const bf16* yr = yp + (b * n + t) * qw;
        for (int64_t head = 0; head < nh + nkv; ++head) {  // q heads, then k heads: rotary
          const bf16* src = yr + head * hd;
          for (int64_t j = 0; j < hd; ++j) {
            const float a = static_cast<float>(src[j]) * c[j];
            const float o = j < half ? static_cast<float>(src[j + half]) * (-s[j])
                                     : static_cast<float>(src[j - half]) * s[j];
            rot[j] = a + o;
          }
          float* dst = head < nh ? qp + ((b * nh + head) * n + t) * hd
                                 : kl + b * kv_b + ((head - nh) * max_len + at_pos) * hd;
          for (int64_t j = 0; j < hd; ++j) dst[j] = rot[j];
        }
        for (int64_t head = 0; head < nkv; ++head) {  // v heads: widened as they are
          const bf16* src = yr + (nh + nkv + head) * hd;
          float* dst = vl + b * kv_b + (head * max_len + at_pos) * hd;
          for (int64_t j = 0; j < hd; ++j) dst[j] = static_cast<float>(src[j]);
        }
      }
    }
    bf16* aip = att_in.data_ptr<bf16>();
#ifdef SLM_X86
    if (own_attention) {
      attend_avx512(qp, kl, vl, mask_p, mask_b, B, n, nh, nkv, hd, max_len, span, kv_b, shared, aip);
    } else
#endif
    {
      Tensor Ki = K.select(0, i).narrow(2, 0, span), Vi = V.select(0, i).narrow(2, 0, span);
      Tensor att = at::scaled_dot_product_attention(q, Ki, Vi, mask, 0.0, false, std::nullopt, nh != nkv);
      const float* ap = att.data_ptr<float>();  // [B, nh, n, hd] -> [rows, nh * hd] bf16
      TORCH_CHECK(att.is_contiguous(), "fused_layers: attention output not contiguous");
      for (int64_t b = 0; b < B; ++b)
        for (int64_t head = 0; head < nh; ++head)
          for (int64_t t = 0; t < n; ++t) {
            const float* src = ap + ((b * nh + head) * n + t) * hd;
            bf16* dst = aip + (b * n + t) * D + head * hd;
            for (int64_t j = 0; j < hd; ++j) dst[j] = bf16(src[j]);
          }
    }
    Tensor o = matmul(att_in, o_w, o_s, o_b, o_ws, i);
    const bf16* op = o.data_ptr<bf16>();
    for (int64_t e = 0; e < rows * D; ++e) xs[e] = xs[e] + static_cast<float>(op[e]);

    rms_norm_bf16(xs, n2[i].data_ptr<float>(), hp, rows, D, eps_d);
    Tensor gu = matmul(h, gu_w, gu_s, gu_b, gu_ws, i);  // [rows, 2 I] bf16
    const int64_t I = gu.size(1) / 2;
    // silu through torch's own vectorized kernel (its exp rounds differently from std::exp), on the gate half
    // widened to fp32 as the Python loop does; then times the up half, rounded to bf16 for the down matrix
    if (!g32.defined()) {
      g32 = at::empty({rows, I}, fopt);
      act = at::empty({rows, I}, bopt);
    }
    TORCH_CHECK(g32.size(1) == I, "fused_layers: every layer needs the same intermediate size");
    const bf16* gp = gu.data_ptr<bf16>();
    float* g32p = g32.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < I; ++j) g32p[r * I + j] = static_cast<float>(gp[r * 2 * I + j]);
    at::silu_(g32);
    bf16* actp = act.data_ptr<bf16>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < I; ++j)
        actp[r * I + j] = bf16(g32p[r * I + j] * static_cast<float>(gp[r * 2 * I + I + j]));
    Tensor dn = matmul(act, dn_w, dn_s, dn_b, dn_ws, i);
    const bf16* dp = dn.data_ptr<bf16>();
    for (int64_t e = 0; e < rows * D; ++e) xs[e] = xs[e] + static_cast<float>(dp[e]);
  }
  return x;
}

}  // namespace

TORCH_LIBRARY(slm_native, m) {
  m.def("fused_layers(Tensor x, Tensor[] n1, Tensor[] qkv_w, Tensor[] qkv_s, Tensor[] o_w, Tensor[] o_s, "
        "Tensor[] n2, Tensor[] gu_w, Tensor[] gu_s, Tensor[] dn_w, Tensor[] dn_s, Tensor[] qkv_b, Tensor[] o_b, "
        "Tensor[] gu_b, Tensor[] dn_b, Tensor[] qkv_ws, Tensor[] o_ws, Tensor[] gu_ws, Tensor[] dn_ws, Tensor K, "
        "Tensor V, Tensor pos, Tensor cos, Tensor sin, Tensor? mask, int span, int nh, int nkv, float eps, "
        "int max_rows, int shared=0) -> Tensor");
  m.impl("fused_layers", c10::DispatchKey::CPU, TORCH_FN(fused_layers));
  m.def("int8_mm(Tensor x, Tensor w, Tensor scale, Tensor wsum) -> Tensor");
  m.impl("int8_mm", c10::DispatchKey::CPU, TORCH_FN(int8_mm_op));
  m.def("int8_kernel() -> str", &int8_kernel);
}
