/* Float32 CPU kernels for the decode step outside the matmuls (AVX2 + FMA), loaded with ctypes.
 *
 * A decode step at batch 8 runs ~30 small torch ops per layer; each costs microseconds of dispatch, and
 * the OpenMP-parallel ones (index_select of the KV blocks, SDPA) stall for a time slice on a busy
 * machine. These kernels replace them, single-threaded in the caller (the work per layer is tens of
 * microseconds at decode sizes):
 *
 * cs_rmsnorm: optionally res[m] += x[m] (in place: the residual stream), then
 *   out[m] = w * (s[m] * 1/sqrt(mean(s[m]^2) + eps)), s = res (or x without a residual).
 * cs_silu_mul: out[m, i] = silu(g[m, i]) * u[m, i] (gate and up: views of one packed row, same stride).
 * cs_rope_store: rotary (non-interleaved halves) on the q and k columns of each packed qkv row, in place,
 *   then k and v of token t copied into its KV slot (page slots[t] / bs, offset slots[t] % bs).
 * cs_decode_attn: for each decode sequence s (query row rows[s]), softmax(q k^T / sqrt(D)) v over its
 *   first lens[s] KV slots, read straight from the pages of its block table (no gathered copy); GQA:
 *   query head h reads KV head h / (Hq / Hk). Online softmax over chunks of CH tokens.
 * cs_lse_argmax: per row of logits [M, V]: logsumexp and the first index of the maximum (-1: a NaN).
 *
 * KV cache layout (one layer, K or V): element (page, offset, head, d) at
 *   base + page * page_stride + offset * slot_stride + head * D + d.
 * Every page index is checked against num_pages before anything is written or read: -1 on a bad index.
 * Rounding: the same operation order as the torch reference except sums (dot products, mean of squares)
 * and exp (a Cephes-style polynomial, ~2 ulp), so results agree to float32 rounding.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define CH 32        /* tokens per online-softmax chunk */
#define MAX_G 16     /* query heads per KV head */
#define MAX_D 256    /* head dim */

static inline float step_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp(x) for 8 lanes (Cephes expf: range reduction by ln 2, degree-5 polynomial), x clamped to +-88.37 */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, z, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
    n = _mm256_max_epi32(n, _mm256_setzero_si256()); /* exp(-88.37) -> 2^-127 scale: flush to zero */
    return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
}

static inline float exp1(float x) {
    return _mm256_cvtss_f32(exp8(_mm256_set1_ps(x)));
}

int cs_rmsnorm(float *x, int64_t ldx, float *res, int64_t ldr, const float *w, float *out, int64_t ldo,
               int64_t M, int64_t H, float eps) {
    for (int64_t m = 0; m < M; m++) {
        float *xr = x + m * ldx, *o = out + m * ldo, *s = xr;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int64_t i = 0;
        if (res) {
            s = res + m * ldr;
            for (; i + 8 <= H; i += 8) {
                __m256 v = _mm256_add_ps(_mm256_loadu_ps(s + i), _mm256_loadu_ps(xr + i));
                _mm256_storeu_ps(s + i, v);
                if (i & 8) a1 = _mm256_fmadd_ps(v, v, a1); else a0 = _mm256_fmadd_ps(v, v, a0);
            }
            for (int64_t j = i; j < H; j++) s[j] += xr[j];
        } else {
            for (; i + 8 <= H; i += 8) {
                __m256 v = _mm256_loadu_ps(s + i);
                if (i & 8) a1 = _mm256_fmadd_ps(v, v, a1); else a0 = _mm256_fmadd_ps(v, v, a0);
            }
        }
        float ss = step_hsum(_mm256_add_ps(a0, a1));
        for (int64_t j = i; j < H; j++) ss += s[j] * s[j];
        float inv = 1.0f / sqrtf(ss / (float)H + eps);
        __m256 iv = _mm256_set1_ps(inv);
        for (i = 0; i + 8 <= H; i += 8)
            _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(w + i),
                                                  _mm256_mul_ps(_mm256_loadu_ps(s + i), iv)));
        for (; i < H; i++) o[i] = w[i] * (s[i] * inv);
    }
    return 0;
}

int cs_silu_mul(const float *gate, const float *up, int64_t ldg, int64_t M, int64_t I, float *out,
                int64_t ldo) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (int64_t m = 0; m < M; m++) {
        const float *g = gate + m * ldg, *u = up + m * ldg;
        float *o = out + m * ldo;
        int64_t i = 0;
        for (; i + 8 <= I; i += 8) {
            __m256 gv = _mm256_loadu_ps(g + i);
            __m256 sv = _mm256_div_ps(gv, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, gv))));
            _mm256_storeu_ps(o + i, _mm256_mul_ps(sv, _mm256_loadu_ps(u + i)));
        }
        for (; i < I; i++) o[i] = g[i] / (1.0f + exp1(-g[i])) * u[i];
    }
    return 0;
}

/* rotate the D-vector x in place: x1 * c - x2 * s | x2 * c' + x1 * s' (halves of D) */
static inline void rope1(float *x, const float *c, const float *s, int D) {
    int h = D / 2, i = 0;
    for (; i + 8 <= h; i += 8) {
        __m256 x1 = _mm256_loadu_ps(x + i), x2 = _mm256_loadu_ps(x + h + i);
        __m256 lo = _mm256_sub_ps(_mm256_mul_ps(x1, _mm256_loadu_ps(c + i)), _mm256_mul_ps(x2, _mm256_loadu_ps(s + i)));
        __m256 hi = _mm256_add_ps(_mm256_mul_ps(x2, _mm256_loadu_ps(c + h + i)),
                                  _mm256_mul_ps(x1, _mm256_loadu_ps(s + h + i)));
        _mm256_storeu_ps(x + i, lo);
        _mm256_storeu_ps(x + h + i, hi);
    }
    for (; i < h; i++) {
        float x1 = x[i], x2 = x[h + i];
        x[i] = x1 * c[i] - x2 * s[i];
        x[h + i] = x2 * c[h + i] + x1 * s[h + i];
    }
}

int cs_rope_store(float *qkv, int64_t ldq, int64_t T, int Hq, int Hk, int D, const float *cosv,
                  const float *sinv, int64_t ldc, const int64_t *slots, float *kc, float *vc,
                  int64_t page_stride, int64_t slot_stride, int64_t block_size, int64_t num_pages) {
    for (int64_t t = 0; t < T; t++)
        if (slots[t] < 0 || slots[t] / block_size >= num_pages) return -1;
    for (int64_t t = 0; t < T; t++) {
        float *row = qkv + t * ldq;
        const float *c = cosv + t * ldc, *s = sinv + t * ldc;
        for (int h = 0; h < Hq + Hk; h++) rope1(row + (int64_t)h * D, c, s, D);
        int64_t off = (slots[t] / block_size) * page_stride + (slots[t] % block_size) * slot_stride;
        const float *k = row + (int64_t)Hq * D, *v = k + (int64_t)Hk * D;
        for (int64_t i = 0; i < (int64_t)Hk * D; i++) {
            kc[off + i] = k[i];
            vc[off + i] = v[i];
        }
    }
    return 0;
}

typedef struct {
    const float *kc, *vc;
    int64_t page_stride, slot_stride, block_size;
    const int64_t *table;
} kv_src;

static inline int64_t kv_offset(const kv_src *src, int64_t j) {
    return src->table[j / src->block_size] * src->page_stride + (j % src->block_size) * src->slot_stride;
}

/* Scores of CH tokens' keys k[j] against the G queries: sc[i][j] = dot(q_i, k_j) * scale, 4 keys at a time
 * (4 independent FMA chains, reduced together). nv = D / 8 (a constant after inlining). */
static inline __attribute__((always_inline)) void scores(const float *q, int G, int nv, const float *const *k,
                                                         int c, float sc[MAX_G][CH], float scale) {
    int j = 0;
    const __m128 sv = _mm_set1_ps(scale);
    for (; j + 4 <= c; j += 4)
        for (int i = 0; i < G; i++) {
            const float *qi = q + (int64_t)i * nv * 8;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int d = 0; d < nv; d++) {
                __m256 x = _mm256_loadu_ps(qi + 8 * d);
                a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[j] + 8 * d), a0);
                a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[j + 1] + 8 * d), a1);
                a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[j + 2] + 8 * d), a2);
                a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(k[j + 3] + 8 * d), a3);
            }
            __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
            __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _mm_storeu_ps(sc[i] + j, _mm_mul_ps(r, sv));
        }
    for (; j < c; j++)
        for (int i = 0; i < G; i++) {
            const float *qi = q + (int64_t)i * nv * 8;
            __m256 a = _mm256_setzero_ps();
            for (int d = 0; d < nv; d++) a = _mm256_fmadd_ps(_mm256_loadu_ps(qi + 8 * d), _mm256_loadu_ps(k[j] + 8 * d), a);
            sc[i][j] = step_hsum(a) * scale;
        }
}

/* Online-softmax update of query i with its chunk scores: p = exp(sc - max) in place, returns the factor
 * that rescales the previous accumulator. */
static inline float softmax_chunk(float *sc, int c, float *mx, float *l) {
    float m = *mx;
    for (int j = 0; j < c; j++) m = sc[j] > m ? sc[j] : m;
    float corr = exp1(*mx - m); /* exp(-inf) = 0 on the first chunk */
    *mx = m;
    float sum = 0.0f;
    int j = 0;
    __m256 mv = _mm256_set1_ps(m);
    for (; j + 8 <= c; j += 8) {
        __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), mv));
        _mm256_storeu_ps(sc + j, p);
        sum += step_hsum(p);
    }
    for (; j < c; j++) {
        sc[j] = exp1(sc[j] - m);
        sum += sc[j];
    }
    *l = *l * corr + sum;
    return corr;
}

/* One KV head of one sequence: G query heads q[i] (contiguous, D = 8 nv floats each) -> o[i], over n
 * tokens. The accumulator of one query head stays in registers over a chunk (nv constant after inlining). */
static inline __attribute__((always_inline)) void attend_group_nv(const float *q, float *o, int G, int nv,
                                                                  int g, int64_t n, const kv_src *src,
                                                                  float scale) {
    __m256 acc[MAX_G][MAX_D / 8];
    float mx[MAX_G], l[MAX_G], sc[MAX_G][CH];
    const float *kr[CH], *vr[CH];
    const int64_t D = (int64_t)nv * 8;
    for (int i = 0; i < G; i++) {
        mx[i] = -INFINITY;
        l[i] = 0.0f;
        for (int d = 0; d < nv; d++) acc[i][d] = _mm256_setzero_ps();
    }
    for (int64_t j0 = 0; j0 < n; j0 += CH) {
        int c = (int)(n - j0 < CH ? n - j0 : CH);
        for (int j = 0; j < c; j++) {
            int64_t off = kv_offset(src, j0 + j) + g * D;
            kr[j] = src->kc + off;
            vr[j] = src->vc + off;
        }
        scores(q, G, nv, kr, c, sc, scale);
        for (int i = 0; i < G; i++) {
            __m256 cv = _mm256_set1_ps(softmax_chunk(sc[i], c, &mx[i], &l[i]));
            __m256 a[MAX_D / 8];
            for (int d = 0; d < nv; d++) a[d] = _mm256_mul_ps(acc[i][d], cv);
            for (int j = 0; j < c; j++) {
                __m256 p = _mm256_set1_ps(sc[i][j]);
                for (int d = 0; d < nv; d++) a[d] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vr[j] + 8 * d), a[d]);
            }
            for (int d = 0; d < nv; d++) acc[i][d] = a[d];
        }
    }
    for (int i = 0; i < G; i++) {
        __m256 inv = _mm256_set1_ps(1.0f / l[i]);
        for (int d = 0; d < nv; d++) _mm256_storeu_ps(o + i * D + 8 * d, _mm256_mul_ps(acc[i][d], inv));
    }
}

static void attend_group(const float *q, float *o, int G, int nv, int g, int64_t n, const kv_src *src,
                         float scale) {
    switch (nv) { /* common head dims with the accumulators unrolled */
    case 2: attend_group_nv(q, o, G, 2, g, n, src, scale); break;
    case 4: attend_group_nv(q, o, G, 4, g, n, src, scale); break;
    case 8: attend_group_nv(q, o, G, 8, g, n, src, scale); break;
    case 16: attend_group_nv(q, o, G, 16, g, n, src, scale); break;
    default: attend_group_nv(q, o, G, nv, g, n, src, scale); break;
    }
}

int cs_decode_attn(const float *q, int64_t ldq, int64_t S, const int64_t *rows, int Hq, int Hk, int D,
                   const float *kc, const float *vc, int64_t page_stride, int64_t slot_stride,
                   int64_t block_size, int64_t num_pages, const int64_t *tables, int64_t ldt,
                   const int64_t *lens, float *out, int64_t ldo, float scale) {
    int G = Hq / Hk;
    if (Hk <= 0 || Hq % Hk != 0 || G > MAX_G || D % 8 != 0 || D > MAX_D) return -2;
    for (int64_t s = 0; s < S; s++) {
        if (lens[s] < 1 || (lens[s] + block_size - 1) / block_size > ldt) return -1;
        for (int64_t b = 0; b < (lens[s] + block_size - 1) / block_size; b++)
            if (tables[s * ldt + b] < 0 || tables[s * ldt + b] >= num_pages) return -1;
    }
    for (int64_t s = 0; s < S; s++) {
        int64_t r = rows ? rows[s] : s;
        kv_src src = {kc, vc, page_stride, slot_stride, block_size, tables + s * ldt};
        for (int g = 0; g < Hk; g++)
            attend_group(q + r * ldq + (int64_t)g * G * D, out + r * ldo + (int64_t)g * G * D, G, D / 8, g,
                         lens[s], &src, scale);
    }
    return 0;
}

int cs_lse_argmax(const float *x, int64_t ldx, int64_t M, int64_t V, float *lse, int64_t *arg) {
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * ldx;
        __m256 mv = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= V; i += 8) {
            __m256 v = _mm256_loadu_ps(r + i);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            mv = _mm256_max_ps(mv, v);
        }
        if (_mm256_movemask_ps(nan)) return -1;
        float best = _mm256_cvtss_f32(mv);
        float lanes[8];
        _mm256_storeu_ps(lanes, mv);
        for (int k = 1; k < 8; k++) best = lanes[k] > best ? lanes[k] : best;
        for (int64_t j = i; j < V; j++) {
            if (r[j] != r[j]) return -1;
            best = r[j] > best ? r[j] : best;
        }
        int64_t at = 0;
        while (at < V && r[at] != best) at++; /* first index of the maximum, as torch.argmax */
        arg[m] = at < V ? at : 0;
        if (best == -INFINITY) {
            lse[m] = -INFINITY;
            continue;
        }
        __m256 bv = _mm256_set1_ps(best), s0 = _mm256_setzero_ps(), s1 = s0;
        for (i = 0; i + 16 <= V; i += 16) {
            s0 = _mm256_add_ps(s0, exp8(_mm256_sub_ps(_mm256_loadu_ps(r + i), bv)));
            s1 = _mm256_add_ps(s1, exp8(_mm256_sub_ps(_mm256_loadu_ps(r + i + 8), bv)));
        }
        float sum = step_hsum(_mm256_add_ps(s0, s1));
        for (; i < V; i++) sum += exp1(r[i] - best);
        lse[m] = best + logf(sum);
    }
    return 0;
}
