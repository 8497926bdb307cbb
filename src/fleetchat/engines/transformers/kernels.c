/* Native CPU kernels for the fast Llama runner (x86-64 with AMX-BF16 and AVX-512 BF16).
 *
 * Built on first use by fleetchat/engines/transformers/native.py (gcc, a second or two) and loaded
 * with ctypes; there is no Python or torch header in here, only raw pointers.
 *
 *   fc_linear             y = x W^T with bf16 weights pre-packed for AMX, plus epilogues
 *                         (store, add into y for residuals, SiLU(gate) * up for the MLP)
 *   fc_linear_i8          the same with int8 weights (per-channel scales) and 16-bit activations
 *   fc_rmsnorm            RMSNorm of float32 rows (the residual stream), bf16 out
 *   fc_attention          one row per token (decode or prompt): RoPE on q and k, k/v written into
 *                         the slot cache, causal attention over the slot's cached positions
 *
 * Batch invariance: every output row depends only on its own input row (linear, norm) or on its own
 * sequence (attention); tiling never changes the order of additions for a row, so a request's result
 * is the same bits alone or inside any batch.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef uint16_t bf16;

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int fc_abi_version(void) { return 1; }

/* threads for every parallel region (the engine sets torch's count); 0 = OpenMP's default */
static int n_threads = 0;
void fc_set_threads(int n) { n_threads = n; }
#define THREADS (n_threads > 0 ? n_threads : omp_get_max_threads())

/* Ask Linux for permission to use AMX tile data in this process; 0 when granted. */
int fc_init(void) { return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 0 : -1; }

typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config_t;

static void tiles_on(void) {
    tile_config_t c;
    memset(&c, 0, sizeof c);
    c.palette_id = 1;
    for (int i = 0; i < 8; i++) {
        c.colsb[i] = 64;
        c.rows[i] = 16;
    }
    _tile_loadconfig(&c);
}

/* ---- bf16 helpers --------------------------------------------------------------------------- */

static inline __m512 load_bf16x16(const bf16 *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static inline void store_bf16x16(bf16 *p, __m512 v) {
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v));
}

static inline __m512 round_bf16(__m512 v) { /* v rounded to bf16 and back to float32 */
    __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline float bf16_to_f32(bf16 v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* e^x, float32, relative error ~1e-7 (Cephes polynomial; scalef does the 2^n) */
static inline __m512 exp512(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 y = _mm512_set1_ps(1.9875691500E-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507E-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073E-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894E-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459E-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201E-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

/* Prefetch one 1 KB B tile (16 lines of 64 bytes) into L1: the tile loads that follow would
 * otherwise wait on L3/DRAM latency each step (weights are streamed once per call). */
static inline void prefetch_tile(const void *p) {
    const char *c = (const char *)p;
    for (int i = 0; i < 16; i++) _mm_prefetch(c + 64 * i, _MM_HINT_T0);
}

/* ---- linear --------------------------------------------------------------------------------- */

/* AMX's B layout for w [N][K] (row major, elements of `size` bytes): blocks of 16 output rows, each
 * [K / per][16][per], so one 64-byte tile row holds `per` consecutive inputs of 16 outputs. */
static void pack_tiles(const char *w, long N, long K, long size, long per, char *out) {
    long chunks = K / per, bytes = per * size;
    for (long blk = 0; blk < N / 16; blk++)
        for (long p = 0; p < chunks; p++)
            for (long c = 0; c < 16; c++)
                memcpy(out + ((blk * chunks + p) * 16 + c) * bytes, w + ((blk * 16 + c) * K + p * per) * size, bytes);
}

/* Pack w [N][K] bf16 for fc_linear: [N/16][K/2][16][2]. */
void fc_pack(const bf16 *w, long N, long K, bf16 *out) { pack_tiles((const char *)w, N, K, 2, 2, (char *)out); }

enum { EPI_STORE = 0, EPI_ADD = 1, EPI_SILU_MUL = 2, EPI_STORE_F32 = 3 };

/* Rows r of a 32-column group g: cbuf [32][32] float32 (columns 0-15 block 2g, 16-31 block 2g+1). */
static void epilogue(const float *cbuf, long rows, long row0, long g, long N, bf16 *y, int epi) {
    for (long r = 0; r < rows; r++) {
        __m512 a0 = _mm512_load_ps(cbuf + r * 32), a1 = _mm512_load_ps(cbuf + r * 32 + 16);
        if (epi == EPI_STORE) {
            bf16 *o = y + (row0 + r) * N + g * 32;
            store_bf16x16(o, a0);
            store_bf16x16(o + 16, a1);
        } else if (epi == EPI_STORE_F32) { /* float32 y = acc (logits) */
            float *o = (float *)y + (row0 + r) * N + g * 32;
            _mm512_storeu_ps(o, a0);
            _mm512_storeu_ps(o + 16, a1);
        } else if (epi == EPI_ADD) { /* float32 y += acc: the residual stream stays in float32 */
            float *o = (float *)y + (row0 + r) * N + g * 32;
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a0));
            _mm512_storeu_ps(o + 16, _mm512_add_ps(_mm512_loadu_ps(o + 16), a1));
        } else { /* gate block, up block -> 16 outputs of silu(gate) * up */
            __m512 gt = round_bf16(a0), up = round_bf16(a1);
            __m512 s = round_bf16(_mm512_div_ps(gt, _mm512_add_ps(_mm512_set1_ps(1.0f), exp512(_mm512_sub_ps(_mm512_setzero_ps(), gt)))));
            store_bf16x16(y + (row0 + r) * (N / 2) + g * 16, _mm512_mul_ps(s, up));
        }
    }
}

/* y = x W^T for x [M][K] bf16 and W packed by fc_pack ([N][K]); K % 32 == 0, N % 32 == 0.
 * epi: EPI_STORE bf16 y [M][N] = result; EPI_STORE_F32 the same in float32; EPI_ADD float32 y [M][N] += result; EPI_SILU_MUL bf16
 * y [M][N/2] with W's 16-row blocks alternating gate, up. */
void fc_linear(const bf16 *x, long M, long K, const bf16 *w, long N, void *yv, int epi) {
    bf16 *y = (bf16 *)yv;
    long pairs = K / 2, groups = N / 32, Mp = (M + 15) / 16 * 16;
    const bf16 *xp = x;
    bf16 *pad = NULL;
    if (Mp != M) { /* the tail tile reads 16 rows: give it zero rows to read */
        pad = aligned_alloc(64, (size_t)Mp * K * 2);
        memcpy(pad, x, (size_t)M * K * 2);
        memset(pad + M * K, 0, (size_t)(Mp - M) * K * 2);
        xp = pad;
    }
    /* dynamic: on a busy machine a descheduled thread does not hold the others at the barrier */
#pragma omp parallel num_threads(THREADS)
    {
        tiles_on();
        float cbuf[32 * 32] __attribute__((aligned(64)));
#pragma omp for schedule(dynamic, 1)
        for (long g = 0; g < groups; g++) {
            const bf16 *b0 = w + (2 * g) * pairs * 32, *b1 = w + (2 * g + 1) * pairs * 32;
            for (long m0 = 0; m0 < Mp; m0 += 32) {
                int two = m0 + 16 < Mp;
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (long k = 0; k < K; k += 32) {
                    if (m0 == 0) { /* 2 steps ahead, into the next group's first steps at the end */
                        long ahead = k + 2 * 32;
                        const bf16 *n0 = ahead < K ? b0 + ahead * 16 : b0 + 2 * pairs * 32 + (ahead - K) * 16;
                        const bf16 *n1 = ahead < K ? b1 + ahead * 16 : b1 + 2 * pairs * 32 + (ahead - K) * 16;
                        if (ahead < K || g + 1 < groups) {
                            prefetch_tile(n0);
                            prefetch_tile(n1);
                        }
                    }
                    _tile_loadd(4, xp + m0 * K + k, K * 2);
                    _tile_loadd(6, b0 + k * 16, 64);
                    _tile_loadd(7, b1 + k * 16, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    if (two) {
                        _tile_loadd(5, xp + (m0 + 16) * K + k, K * 2);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                }
                _tile_stored(0, cbuf, 128);
                _tile_stored(1, cbuf + 16, 128);
                if (two) {
                    _tile_stored(2, cbuf + 16 * 32, 128);
                    _tile_stored(3, cbuf + 16 * 32 + 16, 128);
                }
                long rows = M - m0 < 32 ? M - m0 : 32;
                epilogue(cbuf, rows, m0, g, N, y, epi);
            }
        }
        _tile_release();
    }
    free(pad);
}

/* ---- int8 weights ---------------------------------------------------------------------------
 * Weights int8 with one scale per output channel; activations kept at 16 bits: each row of x is
 * quantized to int16 (scale absmax / 32767, finer than bf16's 8-bit mantissa) and split into a
 * signed high byte and an unsigned low byte, q = 256 h + l, so AMX-INT8 computes x W^T exactly in
 * int32 as 256 (h . w) + (l . w). Half the weight bytes of bf16 (a small model stays in the L3
 * cache) and integer sums, so a row's result never depends on the rest of the call. */

/* Pack q [N][K] int8 for fc_linear_i8: [N/16][K/4][16][4]. */
void fc_pack_i8(const int8_t *q, long N, long K, int8_t *out) { pack_tiles((const char *)q, N, K, 1, 4, (char *)out); }

static void split_rows(const bf16 *x, long M, long Mp, long K, int8_t *hi, uint8_t *lo, float *row_scale) {
#pragma omp parallel for schedule(static) num_threads(THREADS) if (M >= 16)
    for (long m = 0; m < Mp; m++) {
        if (m >= M) {
            memset(hi + m * K, 0, K);
            memset(lo + m * K, 0, K);
            row_scale[m] = 0.0f;
            continue;
        }
        const bf16 *row = x + m * K;
        __m512 mx = _mm512_setzero_ps();
        for (long k = 0; k < K; k += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(load_bf16x16(row + k)));
        float amax = _mm512_reduce_max_ps(mx);
        float scale = amax > 0.0f ? amax / 32767.0f : 1.0f;
        __m512 inv = _mm512_set1_ps(1.0f / scale);
        row_scale[m] = scale;
        for (long k = 0; k < K; k += 16) {
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(load_bf16x16(row + k), inv)); /* round to nearest */
            q = _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(32767)), _mm512_set1_epi32(-32767));
            _mm_storeu_si128((__m128i *)(hi + m * K + k), _mm512_cvtepi32_epi8(_mm512_srai_epi32(q, 8)));
            _mm_storeu_si128((__m128i *)(lo + m * K + k), _mm512_cvtepi32_epi8(_mm512_and_si512(q, _mm512_set1_epi32(255))));
        }
    }
}

/* y = x W^T with W int8 (packed by fc_pack_i8) and per-channel scales; K % 64 == 0, N % 32 == 0;
 * epilogues as fc_linear. */
void fc_linear_i8(const bf16 *x, long M, long K, const int8_t *w, const float *w_scale, long N, void *yv, int epi) {
    bf16 *y = (bf16 *)yv;
    long quads = K / 4, groups = N / 32, Mp = (M + 15) / 16 * 16;
    int8_t *hi = aligned_alloc(64, (size_t)Mp * K);
    uint8_t *lo = aligned_alloc(64, (size_t)Mp * K);
    float *row_scale = aligned_alloc(64, (size_t)Mp * sizeof(float));
    split_rows(x, M, Mp, K, hi, lo, row_scale);
#pragma omp parallel num_threads(THREADS)
    {
        tiles_on();
        int32_t ibuf[2][16 * 32] __attribute__((aligned(64)));
        float cbuf[32 * 32] __attribute__((aligned(64)));
#pragma omp for schedule(dynamic, 1)
        for (long g = 0; g < groups; g++) {
            const int8_t *b0 = w + (2 * g) * quads * 64, *b1 = w + (2 * g + 1) * quads * 64;
            __m512 ws0 = _mm512_loadu_ps(w_scale + g * 32), ws1 = _mm512_loadu_ps(w_scale + g * 32 + 16);
            for (long m0 = 0; m0 < Mp; m0 += 16) {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (long k = 0; k < K; k += 64) {
                    if (m0 == 0) {
                        long ahead = k + 2 * 64;
                        const int8_t *n0 = ahead < K ? b0 + ahead * 16 : b0 + 2 * quads * 64 + (ahead - K) * 16;
                        const int8_t *n1 = ahead < K ? b1 + ahead * 16 : b1 + 2 * quads * 64 + (ahead - K) * 16;
                        if (ahead < K || g + 1 < groups) {
                            prefetch_tile(n0);
                            prefetch_tile(n1);
                        }
                    }
                    _tile_loadd(4, hi + m0 * K + k, K);
                    _tile_loadd(5, lo + m0 * K + k, K);
                    _tile_loadd(6, b0 + k * 16, 64);
                    _tile_loadd(7, b1 + k * 16, 64);
                    _tile_dpbssd(0, 4, 6);
                    _tile_dpbssd(1, 4, 7);
                    _tile_dpbusd(2, 5, 6);
                    _tile_dpbusd(3, 5, 7);
                }
                _tile_stored(0, ibuf[0], 128);
                _tile_stored(1, ibuf[0] + 16, 128);
                _tile_stored(2, ibuf[1], 128);
                _tile_stored(3, ibuf[1] + 16, 128);
                long rows = M - m0 < 16 ? M - m0 : 16;
                const __m512 k256 = _mm512_set1_ps(256.0f);
                for (long r = 0; r < rows; r++) {
                    __m512 rs = _mm512_set1_ps(row_scale[m0 + r]);
                    for (int half = 0; half < 2; half++) {
                        __m512 h = _mm512_cvtepi32_ps(_mm512_load_si512((const void *)(ibuf[0] + r * 32 + 16 * half)));
                        __m512 l = _mm512_cvtepi32_ps(_mm512_load_si512((const void *)(ibuf[1] + r * 32 + 16 * half)));
                        __m512 v = _mm512_fmadd_ps(h, k256, l);
                        v = _mm512_mul_ps(_mm512_mul_ps(v, rs), half ? ws1 : ws0);
                        _mm512_store_ps(cbuf + r * 32 + 16 * half, v);
                    }
                }
                epilogue(cbuf, rows, m0, g, N, y, epi);
            }
        }
        _tile_release();
    }
    free(hi);
    free(lo);
    free(row_scale);
}

/* ---- RMSNorm -------------------------------------------------------------------------------- */

/* out = bf16(weight * x * rsqrt(mean(x^2) + eps)) per row of float32 x; K % 16 == 0 */
void fc_rmsnorm(const float *x, long M, long K, const bf16 *weight, float eps, bf16 *out) {
#pragma omp parallel for schedule(static) if (M >= 16) num_threads(THREADS)
    for (long m = 0; m < M; m++) {
        const float *row = x + m * K;
        __m512 ss = _mm512_setzero_ps();
        for (long k = 0; k < K; k += 16) {
            __m512 v = _mm512_loadu_ps(row + k);
            ss = _mm512_fmadd_ps(v, v, ss);
        }
        float inv = 1.0f / sqrtf(_mm512_reduce_add_ps(ss) / (float)K + eps);
        __m512 s = _mm512_set1_ps(inv);
        for (long k = 0; k < K; k += 16)
            store_bf16x16(out + m * K + k, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(row + k), s), load_bf16x16(weight + k)));
    }
}

/* ---- decode attention ----------------------------------------------------------------------- */

static __thread float *scratch = NULL;
static __thread long scratch_len = 0;

static float *scores_buffer(long n) {
    if (scratch_len < n) {
        free(scratch);
        scratch = aligned_alloc(64, (size_t)((n + 15) / 16 * 16) * sizeof(float));
        scratch_len = n;
    }
    return scratch;
}

/* RoPE of one head (Hugging Face's rotate_half convention): out[i] = x[i] cos[i] + x[i +- d/2] sin'[i]
 * with sin' = (-sin, +sin) over the two halves (the sign folded into the table); float32 result. */
static void rope(const bf16 *x, const float *cos, const float *sin, long d, float *out) {
    long half = d / 2;
    for (long i = 0; i < d; i++) {
        float other = bf16_to_f32(x[i < half ? i + half : i - half]);
        out[i] = bf16_to_f32(x[i]) * cos[i] + other * sin[i];
    }
}

/* Attention for n rows (tokens), each at position pos[i] of cache slot slots[i]: a decode token, or
 * one token of a prompt chunk (a chunk is consecutive rows of one slot). qkv [n][(hq + 2 hkv) d]
 * holds the step's projections (q heads, then k heads, then v heads). First every row's key (rotated)
 * and value go into the cache, then each row attends over positions 0 .. pos[i] of its slot (causal
 * by construction). k_cache/v_cache [slots][hkv][cap][d]; out [n][hq d]; d % 32 == 0, d <= 256.
 * A row's result depends only on its own query and its slot's cache, never on the other rows. */
void fc_attention(const bf16 *qkv, long n, long hq, long hkv, long d, const long *slots, const long *pos,
                  const float *cos_table, const float *sin_table, bf16 *k_cache, bf16 *v_cache, long cap,
                  float scale, bf16 *out) {
    long group = hq / hkv, width = (hq + 2 * hkv) * d;
#pragma omp parallel num_threads(THREADS)
    {
#pragma omp for schedule(static)
        for (long item = 0; item < n * hkv; item++) {
            long i = item / hkv, h = item % hkv, p = pos[i];
            const bf16 *row = qkv + i * width;
            float tmp[256] __attribute__((aligned(64)));
            long at = ((slots[i] * hkv + h) * cap + p) * d;
            rope(row + (hq + h) * d, cos_table + p * d, sin_table + p * d, d, tmp);
            for (long c = 0; c < d; c += 16) store_bf16x16(k_cache + at + c, _mm512_load_ps(tmp + c));
            memcpy(v_cache + at, row + (hq + hkv + h) * d, d * sizeof(bf16));
        }
#pragma omp for schedule(dynamic, 1)
        for (long item = 0; item < n * hkv; item++) {
            long i = item / hkv, h = item % hkv, p = pos[i], len = p + 1;
            const bf16 *row = qkv + i * width;
            const float *cs = cos_table + p * d, *sn = sin_table + p * d;
            float tmp[256] __attribute__((aligned(64)));
            const bf16 *kbase = k_cache + ((slots[i] * hkv + h) * cap) * d;
            const bf16 *vbase = v_cache + ((slots[i] * hkv + h) * cap) * d;
        /* the group's query heads, rotated and rounded to bf16 as the model does */
        bf16 q[8][256] __attribute__((aligned(64)));
        long gmax = group < 8 ? group : 8;
        float *scores = scores_buffer(gmax * len);
        for (long g0 = 0; g0 < group; g0 += gmax) {
            long gn = group - g0 < gmax ? group - g0 : gmax;
            for (long g = 0; g < gn; g++) {
                rope(row + (h * group + g0 + g) * d, cs, sn, d, tmp);
                for (long c = 0; c < d; c += 16)
                    _mm256_storeu_si256((__m256i *)(q[g] + c), (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(tmp + c)));
            }
            /* scores */
            for (long j = 0; j < len; j++) {
                const bf16 *kj = kbase + j * d;
                for (long g = 0; g < gn; g++) {
                    __m512 acc = _mm512_setzero_ps();
                    for (long c = 0; c < d; c += 32)
                        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512((const void *)(kj + c)),
                                               (__m512bh)_mm512_loadu_si512((const void *)(q[g] + c)));
                    scores[g * len + j] = _mm512_reduce_add_ps(acc) * scale;
                }
            }
            /* softmax per head (float32), then the weighted sum of values */
            float inv[8];
            for (long g = 0; g < gn; g++) {
                float *s = scores + g * len;
                float mx = -INFINITY;
                for (long j = 0; j < len; j++) mx = s[j] > mx ? s[j] : mx;
                __m512 vmx = _mm512_set1_ps(mx), sum = _mm512_setzero_ps();
                long j = 0;
                for (; j + 16 <= len; j += 16) {
                    __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vmx));
                    _mm512_storeu_ps(s + j, e);
                    sum = _mm512_add_ps(sum, e);
                }
                if (j < len) {
                    __mmask16 m = (__mmask16)((1u << (len - j)) - 1);
                    __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmx));
                    e = _mm512_maskz_mov_ps(m, e);
                    _mm512_mask_storeu_ps(s + j, m, e);
                    sum = _mm512_add_ps(sum, e);
                }
                inv[g] = 1.0f / _mm512_reduce_add_ps(sum);
            }
            for (long c0 = 0; c0 < d; c0 += 64) { /* 64 output dims (4 registers) per head at a time */
                long cn = d - c0 < 64 ? (d - c0) / 16 : 4;
                __m512 acc[8][4];
                for (long g = 0; g < gn; g++)
                    for (long t = 0; t < 4; t++) acc[g][t] = _mm512_setzero_ps();
                for (long j = 0; j < len; j++) {
                    const bf16 *vj = vbase + j * d + c0;
                    __m512 vv[4];
                    for (long t = 0; t < cn; t++) vv[t] = load_bf16x16(vj + 16 * t);
                    for (long g = 0; g < gn; g++) {
                        __m512 w = _mm512_set1_ps(scores[g * len + j]);
                        for (long t = 0; t < cn; t++) acc[g][t] = _mm512_fmadd_ps(w, vv[t], acc[g][t]);
                    }
                }
                for (long g = 0; g < gn; g++) {
                    bf16 *o = out + i * hq * d + (h * group + g0 + g) * d + c0;
                    __m512 s = _mm512_set1_ps(inv[g]);
                    for (long t = 0; t < cn; t++) store_bf16x16(o + 16 * t, _mm512_mul_ps(acc[g][t], s));
                }
            }
        }
    }
}
}
