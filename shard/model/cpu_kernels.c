/* Small-batch CPU kernels for the shard (AVX2 + FMA, own thread pool), loaded with ctypes. Activations
 * and accumulation are float32; LoRA weights may be float32, bfloat16 or float16.
 *
 * Decode multiplies a handful of token rows by large weight matrices: the cost is reading the weights
 * once from memory. ck_linear_packed (the model's linears, weights re-laid in panels at load, below)
 * streams them sequentially; ck_linear and ck_lora stream each row-major weight row once and dot it with
 * every input row while the row is in L1 (tiles of 3 weight rows x 3 input rows in registers; one input
 * row: 8 weight rows at a time); the inputs stay in L1/L2.
 *
 * ck_linear: y[m, n] (+)= sum_k x[m, k] * w[n, k] (+ bias[n]) for m < M, n < N: a row-major float32
 *   weight [N, K] with row stride ldw, inputs/outputs with row strides ldx/ldy, unit column stride.
 * ck_lora: BGMV over segments: for segment s (token rows rows[seg[s]..seg[s+1]]), with that adapter's
 *   table entry e = tables[s] + LORA_ENTRY * entry = {A_s ptr, lda, B_s ptr, ldb, r_s, wtype, scale (the
 *   bits of a double), 0} (A_s [r_s, K], B_s [N, r_s], both of element type wtype: WT_F32, WT_BF16 or
 *   WT_F16; A ptr 0: the adapter lacks this module): y[t, :] += B_s @ (scale * (A_s @ x[t, :])).
 *   16-bit weights are widened to float32 in registers (bf16: a 16-bit left shift, exact; fp16: F16C),
 *   so they cost half the memory traffic and compute exactly like their float32 upcast.
 *   Segments own disjoint rows: the shrinks run in parallel by (segment, block of rows), then the
 *   expands by (segment, slice of output rows).
 * Summation order differs from BLAS only by float rounding. No allocation except ck_lora's scratch.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef RW
#define RW 3 /* weight rows per tile */
#endif
#ifndef MX
#define MX 3 /* input rows per tile */
#endif
#ifndef PF_ROWS
#define PF_ROWS 8 /* software prefetch distance, in weight rows */
#endif

/* weight element types (LoRA tables; ck_linear is float32 only) */
enum { WT_F32 = 0, WT_BF16 = 1, WT_F16 = 2 };
#define LORA_ENTRY 8 /* int64 fields per (layer, module) table entry */

static inline int wsize(int wt) { return wt == WT_F32 ? 4 : 2; }

static inline float half_to_float(uint16_t h) { /* IEEE binary16 -> binary32, exact */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13);          /* inf / nan */
    else if (exp) u = sign | ((exp + 112) << 23) | (man << 13);     /* normal */
    else if (!man) u = sign;                                        /* zero */
    else {                                                          /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400u)) { man <<= 1; exp--; }
        u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* 8 consecutive weights at p, widened to float32 (wt is a constant after inlining) */
static inline __attribute__((always_inline)) __m256 wload8(const char *p, int wt) {
    if (wt == WT_F32) return _mm256_loadu_ps((const float *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (wt == WT_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#ifdef __F16C__
    return _mm256_cvtph_ps(h);
#else
    float f[8];
    uint16_t u[8];
    memcpy(u, p, 16);
    for (int i = 0; i < 8; i++) f[i] = half_to_float(u[i]);
    return _mm256_loadu_ps(f);
#endif
}

static inline __attribute__((always_inline)) float wload1(const char *p, int wt) {
    float f;
    if (wt == WT_F32) { memcpy(&f, p, 4); return f; }
    uint16_t h;
    memcpy(&h, p, 2);
    if (wt == WT_F16) return half_to_float(h);
    uint32_t u = (uint32_t)h << 16;
    memcpy(&f, &u, 4);
    return f;
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* out[i][j] = dot(w[i], x[j]) over K, for i < rw, j < mx (compile-time constants after inlining);
 * w rows hold elements of type wt; poff: the prefetch offset into the rows, in bytes. */
static inline __attribute__((always_inline)) void tile(const char *const *w, const float *const *x,
                                                       int64_t K, float out[RW][MX], int rw, int mx,
                                                       const char *pf, int64_t ldw, int64_t *poff,
                                                       int *cnt, int every, int wt) {
    const int es = wsize(wt);
    __m256 acc[RW][MX];
    for (int i = 0; i < rw; i++)
        for (int j = 0; j < mx; j++) acc[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 xv[MX];
        for (int j = 0; j < mx; j++) xv[j] = _mm256_loadu_ps(x[j] + k);
        if (pf && --*cnt == 0) {
            *cnt = every;
            if (*poff < K * es)
                for (int i = 0; i < RW; i++) _mm_prefetch(pf + i * ldw * es + *poff, _MM_HINT_T0);
            *poff += 64;
        }
        for (int i = 0; i < rw; i++) {
            __m256 wv = wload8(w[i] + k * es, wt);
            for (int j = 0; j < mx; j++) acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < rw; i++)
        for (int j = 0; j < mx; j++) {
            float s = hsum(acc[i][j]);
            for (int64_t kk = k; kk < K; kk++) s += wload1(w[i] + kk * es, wt) * x[j][kk];
            out[i][j] = s;
        }
}

#define TILES(ww, oo, rwv, pfv)                                        \
    switch (mx) {                                                      \
    TILE_CASE4(ww, oo, rwv, pfv)                                       \
    TILE_CASE3(ww, oo, rwv, pfv)                                       \
    case 2: tile(ww, x, K, oo, rwv, 2, pfv, ldw, &poff, &cnt, every, wt); break;           \
    default: tile(ww, x, K, oo, rwv, 1, pfv, ldw, &poff, &cnt, every, wt); break;          \
    }
#if MX >= 4
#define TILE_CASE4(ww, oo, rwv, pfv) case 4: tile(ww, x, K, oo, rwv, 4, pfv, ldw, &poff, &cnt, every, wt); break;
#else
#define TILE_CASE4(ww, oo, rwv, pfv)
#endif
#if MX >= 3
#define TILE_CASE3(ww, oo, rwv, pfv) case 3: tile(ww, x, K, oo, rwv, 3, pfv, ldw, &poff, &cnt, every, wt); break;
#else
#define TILE_CASE3(ww, oo, rwv, pfv)
#endif

/* the 8 horizontal sums of a[0..7] as one vector (lane i = sum of a[i]) */
static inline __attribute__((always_inline)) __m256 reduce8(const __m256 *a) {
    __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* One input row (M = 1, the decode rows of LoRA segments): 8 weight rows at a time, 8 independent
 * accumulators (FMA latency hidden) reduced together, so short rows (a LoRA B of rank 8 is one vector per
 * row) do not pay a horizontal sum each; the next block's lines are prefetched while this one runs. */
static inline __attribute__((always_inline)) void gemv_t(const char *w, int64_t ldw, int64_t n0, int64_t n1,
                                                        const float *x, float *y, int64_t K, const float *bias,
                                                        int accumulate, int wt) {
    const int es = wsize(wt);
    int64_t n = n0;
    for (; n + 8 <= n1; n += 8) {
        const char *r0 = w + n * ldw * es, *next = r0 + 8 * ldw * es;
        __m256 acc[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) {
            for (int j = 0; j < es; j++) _mm_prefetch(next + k * 8 * es + 64 * j, _MM_HINT_T0);
            __m256 xv = _mm256_loadu_ps(x + k);
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++)
                acc[i] = _mm256_fmadd_ps(wload8(r0 + (i * ldw + k) * es, wt), xv, acc[i]);
        }
        __m256 v = reduce8(acc);
        if (k < K) {
            float t[8];
            _mm256_storeu_ps(t, v);
            for (int i = 0; i < 8; i++)
                for (int64_t kk = k; kk < K; kk++) t[i] += wload1(r0 + (i * ldw + kk) * es, wt) * x[kk];
            v = _mm256_loadu_ps(t);
        }
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + n));
        if (accumulate) v = _mm256_add_ps(_mm256_loadu_ps(y + n), v);
        _mm256_storeu_ps(y + n, v);
    }
    for (; n < n1; n++) {
        const char *r = w + n * ldw * es;
        __m256 a = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) a = _mm256_fmadd_ps(wload8(r + k * es, wt), _mm256_loadu_ps(x + k), a);
        float v = hsum(a);
        for (; k < K; k++) v += wload1(r + k * es, wt) * x[k];
        v += bias ? bias[n] : 0.0f;
        y[n] = accumulate ? y[n] + v : v;
    }
}

/* Weight rows [n0, n1) (elements of type wt, row stride ldw elements) against all M input rows
 * (xr: row pointers); y rows yr; column n of y. */
static inline __attribute__((always_inline)) void rows_block_t(const char *w, int64_t ldw, int64_t n0,
                                                               int64_t n1, const float *const *xr,
                                                               float *const *yr, int M, int64_t K,
                                                               const float *bias, int accumulate, int wt) {
    if (M == 1) {
        gemv_t(w, ldw, n0, n1, xr[0], yr[0], K, bias, accumulate, wt);
        return;
    }
    const int es = wsize(wt);
    float out[RW][MX];
    for (int64_t n = n0; n < n1; n += RW) {
        int rw = (int)(n1 - n < RW ? n1 - n : RW);
        const char *wr[RW];
        for (int i = 0; i < RW; i++) wr[i] = w + (n + (i < rw ? i : 0)) * ldw * es;
        /* one 64-byte line per row every `every` k-steps of 8 elements covers the rows over all passes */
        int every = (8 / es) * ((M + MX - 1) / MX), cnt = every;
        int64_t poff = 0;
        for (int m = 0; m < M; m += MX) {
            int mx = M - m < MX ? M - m : MX;
            const float *const *x = xr + m;
/* prefetch the rows PF_ROWS ahead (one core's hardware prefetchers keep too few DRAM reads in
             * flight), one line per row every `every` iterations, spread over all the passes */
            const char *pf = n + PF_ROWS + RW <= n1 ? w + (n + PF_ROWS) * ldw * es : NULL;
            if (rw == RW) {
                TILES(wr, out, RW, pf)
            } else { /* leftover rows: one at a time */
                for (int i = 0; i < rw; i++) {
                    const char *w1[RW];
                    for (int q = 0; q < RW; q++) w1[q] = wr[i];
                    float o1[RW][MX];
                    TILES(w1, o1, 1, NULL)
                    for (int j = 0; j < mx; j++) out[i][j] = o1[0][j];
                }
            }
            for (int i = 0; i < rw; i++)
                for (int j = 0; j < mx; j++) {
                    float v = out[i][j] + (bias ? bias[n + i] : 0.0f);
                    float *dst = yr[m + j] + n + i;
                    *dst = accumulate ? *dst + v : v;
                }
        }
    }
}

static void rows_block(const float *w, int64_t ldw, int64_t n0, int64_t n1, const float *const *xr,
                       float *const *yr, int M, int64_t K, const float *bias, int accumulate) {
    rows_block_t((const char *)w, ldw, n0, n1, xr, yr, M, K, bias, accumulate, WT_F32);
}

static void rows_block_bf16(const char *w, int64_t ldw, int64_t n0, int64_t n1, const float *const *xr,
                            float *const *yr, int M, int64_t K, int accumulate) {
    rows_block_t(w, ldw, n0, n1, xr, yr, M, K, NULL, accumulate, WT_BF16);
}

static void rows_block_f16(const char *w, int64_t ldw, int64_t n0, int64_t n1, const float *const *xr,
                           float *const *yr, int M, int64_t K, int accumulate) {
    rows_block_t(w, ldw, n0, n1, xr, yr, M, K, NULL, accumulate, WT_F16);
}

/* rows_block for a LoRA weight of element type wt (no bias) */
static void rows_block_w(const void *w, int wt, int64_t ldw, int64_t n0, int64_t n1, const float *const *xr,
                         float *const *yr, int M, int64_t K, int accumulate) {
    if (wt == WT_BF16) rows_block_bf16((const char *)w, ldw, n0, n1, xr, yr, M, K, accumulate);
    else if (wt == WT_F16) rows_block_f16((const char *)w, ldw, n0, n1, xr, yr, M, K, accumulate);
    else rows_block((const float *)w, ldw, n0, n1, xr, yr, M, K, NULL, accumulate);
}

#define MAX_M 256

int ck_max_m(void) { return MAX_M; }

int ck_lora_entry(void) { return LORA_ENTRY; }

/* ---- thread pool --------------------------------------------------------------------------------
 * Not OpenMP: an OpenMP region ends in a barrier that waits for every thread of the team, so on a busy
 * machine one descheduled thread stalls each of the ~120 matmuls of a decode step for a time slice.
 * Here the caller and the workers claim chunks from one atomic counter (tagged with the job number);
 * the caller waits only for chunks a worker has claimed, never for a worker that is not running.
 * Workers spin briefly between jobs (a decode step issues them back to back), then sleep. */
typedef void (*job_fn)(const void *ctx, int64_t chunk);
typedef struct { job_fn fn; const void *ctx; int64_t nchunks; int nworkers; } job_t;

#define MAX_WORKERS 63
#define SPIN_NS 200000L
static job_t jobs[4];
static _Atomic uint64_t state;   /* (job number << 32) | next chunk */
static _Atomic int64_t done;     /* chunks finished of the current job */
static _Atomic int sleepers;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static atomic_flag busy = ATOMIC_FLAG_INIT;
static int started; /* workers created (by the one thread that calls the kernels) */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Claim and run chunks of job `gen` until none is left or a newer job has replaced it. */
static void work(uint32_t gen, int worker) {
    const job_t *job = &jobs[gen & 3];
    job_fn fn = job->fn;
    const void *ctx = job->ctx;
    int64_t n = job->nchunks;
    if (worker >= job->nworkers) return;
    uint64_t cur = atomic_load(&state);
    while ((uint32_t)(cur >> 32) == gen && (int64_t)(cur & 0xffffffffu) < n) {
        if (atomic_compare_exchange_weak(&state, &cur, cur + 1)) {
            fn(ctx, (int64_t)(cur & 0xffffffffu));
            atomic_fetch_add(&done, 1);
            cur = atomic_load(&state);
        }
    }
}

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg;
    uint32_t seen = (uint32_t)(atomic_load(&state) >> 32);
    for (;;) {
        int64_t t0 = now_ns();
        uint32_t gen;
        while ((gen = (uint32_t)(atomic_load(&state) >> 32)) == seen) {
            _mm_pause();
            if (now_ns() - t0 > SPIN_NS) {
                pthread_mutex_lock(&mu);
                atomic_fetch_add(&sleepers, 1);
                while ((uint32_t)(atomic_load(&state) >> 32) == seen) pthread_cond_wait(&cv, &mu);
                atomic_fetch_sub(&sleepers, 1);
                pthread_mutex_unlock(&mu);
                t0 = now_ns();
            }
        }
        seen = gen;
        work(gen, id);
    }
    return NULL;
}

/* Run fn(ctx, c) for c < nchunks on the caller and up to nthreads - 1 workers. */
static void run(job_fn fn, const void *ctx, int64_t nchunks, int nthreads) {
    if (nthreads > MAX_WORKERS + 1) nthreads = MAX_WORKERS + 1;
    /* one caller at a time; a second concurrent caller runs its job alone */
    if (nthreads <= 1 || nchunks <= 1 || atomic_flag_test_and_set(&busy)) {
        for (int64_t c = 0; c < nchunks; c++) fn(ctx, c);
        return;
    }
    while (started < nthreads - 1) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &at, worker_main, (void *)(intptr_t)started) != 0) break;
        started++;
    }
    uint32_t gen = (uint32_t)(atomic_load(&state) >> 32) + 1;
    jobs[gen & 3] = (job_t){fn, ctx, nchunks, nthreads - 1};
    atomic_store(&done, 0);
    atomic_store(&state, (uint64_t)gen << 32);
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&mu);
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
    work(gen, -1); /* the caller: worker id -1 always passes the nworkers check */
    /* every chunk is claimed now; wait for those that workers are still running */
    int spins = 0;
    while (atomic_load(&done) < nchunks)
        if (++spins > 2000) sched_yield(); else _mm_pause();
    atomic_flag_clear(&busy);
}

/* ---- kernels ------------------------------------------------------------------------------------ */
typedef struct {
    const float *w, *bias;
    int64_t ldw, N, K, chunk;
    const float *const *xr;
    float *const *yr;
    int M, accumulate;
} linear_ctx;

static void linear_chunk(const void *p, int64_t c) {
    const linear_ctx *L = (const linear_ctx *)p;
    int64_t a = c * L->chunk, b = a + L->chunk < L->N ? a + L->chunk : L->N;
    rows_block(L->w, L->ldw, a, b, L->xr, L->yr, L->M, L->K, L->bias, L->accumulate);
}

/* rows per chunk: ~1/8 of a thread's share (a preempted thread holds up little), at least 64 */
static int64_t chunk_rows(int64_t N, int nthreads) {
    int64_t chunk = (N / (8 * (nthreads > 0 ? nthreads : 1)) + RW - 1) / RW * RW;
    return chunk < 64 ? 64 : chunk;
}

int ck_linear(const float *x, int64_t ldx, const float *w, int64_t ldw, const float *bias, float *y,
              int64_t ldy, int M, int64_t N, int64_t K, int accumulate, int nthreads) {
    if (M < 1 || M > MAX_M) return -1;
    const float *xr[MAX_M];
    float *yr[MAX_M];
    for (int m = 0; m < M; m++) { xr[m] = x + m * ldx; yr[m] = y + m * ldy; }
    if (N * K < 65536) nthreads = 1; /* too small to pay for waking threads */
    linear_ctx L = {w, bias, ldw, N, K, chunk_rows(N, nthreads), xr, yr, M, accumulate};
    run(linear_chunk, &L, (N + L.chunk - 1) / L.chunk, nthreads);
    return 0;
}

typedef struct {
    const float *x;
    int64_t ldx;
    float *y;
    int64_t ldy;
    const int32_t *seg, *rows;
    const int64_t *const *tables;
    int64_t entry, N, K, nchunk_n; /* expand: output rows split in nchunk_n chunks per segment */
    float *scratch;
    int rmax;
    const int32_t *shrink; /* shrink chunk c: segment shrink[2c], its rows from shrink[2c + 1] on */
} lora_ctx;

static void lora_rows(const lora_ctx *L, int s, const float **xr, float **yr, float **xa) {
    for (int m = 0; m < L->seg[s + 1] - L->seg[s]; m++) {
        xr[m] = L->x + (int64_t)L->rows[L->seg[s] + m] * L->ldx;
        yr[m] = L->y + (int64_t)L->rows[L->seg[s] + m] * L->ldy;
        xa[m] = L->scratch + (int64_t)(L->seg[s] + m) * L->rmax;
    }
}

static double entry_scale(const int64_t *e) {
    double scale;
    memcpy(&scale, &e[6], sizeof scale);
    return scale;
}

#define SHRINK_ROWS 24 /* rows per shrink chunk: a long (prefill) segment shrinks on every thread */

static void shrink_chunk(const void *p, int64_t c) { /* xa = scale * x A^T, rows of one segment */
    const lora_ctx *L = (const lora_ctx *)p;
    int s = L->shrink[2 * c], m0 = L->shrink[2 * c + 1];
    const int64_t *e = L->tables[s] + LORA_ENTRY * L->entry;
    int M = L->seg[s + 1] - L->seg[s] - m0;
    if (M > SHRINK_ROWS) M = SHRINK_ROWS;
    if (!e[0] || M <= 0) return;
    const float *xr[MAX_M];
    float *yr[MAX_M], *xa[MAX_M];
    lora_rows(L, s, xr, yr, xa);
    rows_block_w((const void *)e[0], (int)e[5], e[1], 0, e[4], xr + m0, xa + m0, M, L->K, 0);
    float scale = (float)entry_scale(e);
    if (scale != 1.0f)
        for (int m = m0; m < m0 + M; m++)
            for (int64_t j = 0; j < e[4]; j++) xa[m][j] *= scale;
}

static void expand_chunk(const void *p, int64_t c) { /* y += xa B^T, one segment's slice of rows */
    const lora_ctx *L = (const lora_ctx *)p;
    int s = (int)(c / L->nchunk_n);
    const int64_t *e = L->tables[s] + LORA_ENTRY * L->entry;
    int M = L->seg[s + 1] - L->seg[s];
    if (!e[0] || M == 0) return;
    const float *xr[MAX_M];
    float *yr[MAX_M], *xa[MAX_M];
    lora_rows(L, s, xr, yr, xa);
    int64_t per = (L->N + L->nchunk_n - 1) / L->nchunk_n, a = (c % L->nchunk_n) * per;
    int64_t b = a + per < L->N ? a + per : L->N;
    if (a < b) rows_block_w((const void *)e[2], (int)e[5], e[3], a, b, (const float *const *)xa, yr, M, e[4], 1);
}

int ck_lora(const float *x, int64_t ldx, float *y, int64_t ldy, int nseg, const int32_t *seg,
            const int32_t *rows, const int64_t *const *tables, int64_t entry, int64_t N, int64_t K,
            int nthreads) {
    int T = seg[nseg], rmax = 0;
    for (int s = 0; s < nseg; s++) {
        const int64_t *e = tables[s] + LORA_ENTRY * entry;
        if (seg[s + 1] - seg[s] > MAX_M) return -1;
        if (e[0] && (e[5] < WT_F32 || e[5] > WT_F16)) return -3;
        if (e[0] && e[4] > rmax) rmax = (int)e[4];
    }
    if (T == 0 || rmax == 0) return 0;
    float *scratch = (float *)malloc(sizeof(float) * (size_t)T * (size_t)rmax);
    int32_t *shrink = (int32_t *)malloc(sizeof(int32_t) * 2 * (size_t)(T / SHRINK_ROWS + nseg));
    if (!scratch || !shrink) {
        free(scratch);
        free(shrink);
        return -2;
    }
    int64_t nshrink = 0;
    for (int s = 0; s < nseg; s++)
        for (int m0 = 0; m0 < seg[s + 1] - seg[s]; m0 += SHRINK_ROWS) {
            shrink[2 * nshrink] = s;
            shrink[2 * nshrink++ + 1] = m0;
        }
    /* expand: split each segment's output rows so that there are >= 4 chunks per thread */
    int64_t nchunk_n = (4 * (int64_t)nthreads + nseg - 1) / nseg;
    if (nchunk_n > N / 64) nchunk_n = N / 64 > 0 ? N / 64 : 1;
    lora_ctx L = {x, ldx, y, ldy, seg, rows, tables, entry, N, K, nchunk_n, scratch, rmax, shrink};
    run(shrink_chunk, &L, nshrink, nthreads);
    run(expand_chunk, &L, nseg * nchunk_n, nthreads);
    free(scratch);
    free(shrink);
    return 0;
}

/* ---- packed weights -----------------------------------------------------------------------------
 * ck_linear_packed: y[m, n] (+)= sum_k x[m, k] * W[n, k] (+ bias[n]) with W [N, K] re-laid as panels
 * wp [P = ceil(N / 8)][K][8] (wp[p][k][j] = W[8p + j, k], rows past N zero). One k step of a panel is
 * one 32-byte vector holding 8 output columns, multiplied by x[m, k] broadcast for every input row m:
 * the weights stream sequentially (helped by a software prefetch PF_FLOATS ahead), no horizontal sums,
 * and the accumulators are the outputs. Up to 8 rows (decode): panel i of the first half together with
 * panel i + ceil(P/2), each against all rows (two far-apart streams per thread, 16 accumulators; see
 * pair()). More rows (prefill): pairs of adjacent panels x 6 rows (12 accumulators, compute-bound), over
 * blocks of M_BLOCK rows so a chunk of panels is re-read from cache, not memory, for every block.
 * Any M >= 1. */
#define PANEL 8
#ifndef PF_FLOATS
#define PF_FLOATS 2048
#endif
#define M_BLOCK 96

static inline __attribute__((always_inline)) void put8(__m256 v, float *dst, const float *bias, int valid,
                                                      int accumulate) {
    if (valid == PANEL) {
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
        if (accumulate) v = _mm256_add_ps(_mm256_loadu_ps(dst), v);
        _mm256_storeu_ps(dst, v);
        return;
    }
    float t[PANEL];
    _mm256_storeu_ps(t, v);
    for (int i = 0; i < valid; i++) {
        float s = t[i] + (bias ? bias[i] : 0.0f);
        dst[i] = accumulate ? dst[i] + s : s;
    }
}

/* rows x[0..mx) against one panel p; outputs columns n..n+valid of y rows */
static inline __attribute__((always_inline)) void pan1(const float *p, int64_t K, const float *const *x, int mx,
                                                      float *const *y, int64_t n, int valid, const float *bias,
                                                      int accumulate, int pf) {
    __m256 a[8];
    _Pragma("GCC unroll 8")
    for (int j = 0; j < mx; j++) a[j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        if (pf && !(k & 1)) _mm_prefetch((const char *)(p + PANEL * k + PF_FLOATS), _MM_HINT_T0);
        __m256 w = _mm256_loadu_ps(p + PANEL * k);
        _Pragma("GCC unroll 8")
        for (int j = 0; j < mx; j++) a[j] = _mm256_fmadd_ps(w, _mm256_broadcast_ss(x[j] + k), a[j]);
    }
    _Pragma("GCC unroll 8")
    for (int j = 0; j < mx; j++) put8(a[j], y[j] + n, bias ? bias + n : NULL, valid, accumulate);
}

/* rows x[0..mx) against two panels p (columns n.., vp valid) and q (columns nq.., vq valid).
 * Prefill: q is p's neighbour (p + 8K), 6 rows at a time (12 accumulators). Decode (M <= 8): p and q
 * come from far-apart parts of the weight, so that each thread keeps two sequential streams in flight:
 * measured 4-13% closer to the read bandwidth than one stream (adjacent panels gain nothing); 16
 * accumulators for 8 rows: the compiler spills a few, which costs less than a second pass. */
static inline __attribute__((always_inline)) void pair(const float *p, const float *q, int64_t K,
                                                      const float *const *x, int mx, float *const *y, int64_t n,
                                                      int vp, int64_t nq, int vq, const float *bias, int acc,
                                                      int pf) {
    __m256 a[8], b[8];
    _Pragma("GCC unroll 8")
    for (int j = 0; j < mx; j++) a[j] = b[j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        if (pf && !(k & 1)) {
            _mm_prefetch((const char *)(p + PANEL * k + PF_FLOATS), _MM_HINT_T0);
            _mm_prefetch((const char *)(q + PANEL * k + PF_FLOATS), _MM_HINT_T0);
        }
        __m256 w = _mm256_loadu_ps(p + PANEL * k), v = _mm256_loadu_ps(q + PANEL * k);
        _Pragma("GCC unroll 8")
        for (int j = 0; j < mx; j++) {
            __m256 xb = _mm256_broadcast_ss(x[j] + k);
            a[j] = _mm256_fmadd_ps(w, xb, a[j]);
            b[j] = _mm256_fmadd_ps(v, xb, b[j]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int j = 0; j < mx; j++) {
        put8(a[j], y[j] + n, bias ? bias + n : NULL, vp, acc);
        put8(b[j], y[j] + nq, bias ? bias + nq : NULL, vq, acc);
    }
}

/* CALL(m) with m the compile-time constant equal to mx (1..8): one specialised kernel per row count */
#define BY_ROWS(CALL, mx)                                                                                \
    switch (mx) {                                                                                         \
    case 8: CALL(8); break;                                                                               \
    case 7: CALL(7); break;                                                                               \
    case 6: CALL(6); break;                                                                               \
    case 5: CALL(5); break;                                                                               \
    case 4: CALL(4); break;                                                                               \
    case 3: CALL(3); break;                                                                               \
    case 2: CALL(2); break;                                                                               \
    default: CALL(1); break;                                                                              \
    }

#define PAN1(mxc) pan1(p, K, x, mxc, y, n, valid, bias, acc, pf)
#define PAN2(mxc) pair(p, p + PANEL * K, K, x, mxc, y, n, PANEL, n + PANEL, PANEL, bias, acc, pf)

static void pan1_any(const float *p, int64_t K, const float *const *x, int mx, float *const *y, int64_t n,
                     int valid, const float *bias, int acc, int pf) {
    BY_ROWS(PAN1, mx)
}

static void pan2_any(const float *p, int64_t K, const float *const *x, int mx, float *const *y, int64_t n,
                     const float *bias, int acc, int pf) {
    BY_ROWS(PAN2, mx)
}

#define PAIR(mxc) pair(p, q, K, x, mxc, y, n, vp, nq, vq, bias, acc, 1)

static void pair_any(const float *p, const float *q, int64_t K, const float *const *x, int mx, float *const *y,
                     int64_t n, int vp, int64_t nq, int vq, const float *bias, int acc) {
    BY_ROWS(PAIR, mx)
}

/* panel i of a decode linear with its pair i + half (when that exists), rows x[0..mx) */
static void decode_pair(const float *wp, int64_t i, int64_t half, int64_t P, int64_t N, int64_t K,
                        const float *const *x, int mx, float *const *y, const float *bias, int acc) {
    int64_t j = i + half, n = i * PANEL, nq = j * PANEL;
    int vp = N - n < PANEL ? (int)(N - n) : PANEL;
    if (j >= P) {
        pan1_any(wp + i * PANEL * K, K, x, mx, y, n, vp, bias, acc, 1);
        return;
    }
    int vq = N - nq < PANEL ? (int)(N - nq) : PANEL;
    pair_any(wp + i * PANEL * K, wp + j * PANEL * K, K, x, mx, y, n, vp, nq, vq, bias, acc);
}

typedef struct {
    const float *wp, *bias;
    int64_t P, N, K, chunk; /* panels, rows, columns, panels per chunk */
    const float *const *xr;
    float *const *yr;
    int M, accumulate;
} packed_ctx;

static void packed_chunk(const void *ctx, int64_t c) {
    const packed_ctx *L = (const packed_ctx *)ctx;
    int64_t p0 = c * L->chunk, p1 = p0 + L->chunk < L->P ? p0 + L->chunk : L->P, K = L->K;
    const float *bias = L->bias;
    int acc = L->accumulate;
    if (L->M <= PANEL) { /* decode: chunk c holds panels [p0, p1) of the first half, each with its pair */
        int64_t half = (L->P + 1) / 2;
        for (int64_t i = p0; i < p1 && i < half; i++)
            decode_pair(L->wp, i, half, L->P, L->N, K, L->xr, L->M, L->yr, bias, acc);
        return;
    }
    for (int mb = 0; mb < L->M; mb += M_BLOCK) {
        int me = mb + M_BLOCK < L->M ? mb + M_BLOCK : L->M;
        for (int64_t p = p0; p < p1;) {
            int64_t n = p * PANEL;
            const float *w = L->wp + p * PANEL * K;
            if (p + 1 < p1 && L->N - n >= 2 * PANEL) {
                for (int m = mb; m < me; m += 6)
                    pan2_any(w, K, L->xr + m, me - m < 6 ? me - m : 6, L->yr + m, n, bias, acc, m == mb);
                p += 2;
            } else {
                int valid = L->N - n < PANEL ? (int)(L->N - n) : PANEL;
                for (int m = mb; m < me; m += PANEL)
                    pan1_any(w, K, L->xr + m, me - m < PANEL ? me - m : PANEL, L->yr + m, n, valid, bias, acc,
                             m == mb);
                p += 1;
            }
        }
    }
}

int ck_panel(void) { return PANEL; }

int ck_linear_packed(const float *x, int64_t ldx, const float *wp, const float *bias, float *y, int64_t ldy,
                     int M, int64_t N, int64_t K, int accumulate, int nthreads) {
    if (M < 1 || N < 1 || K < 1) return -1;
    const float **xr = (const float **)malloc(sizeof(float *) * (size_t)M);
    float **yr = (float **)malloc(sizeof(float *) * (size_t)M);
    if (!xr || !yr) {
        free(xr);
        free(yr);
        return -2;
    }
    for (int m = 0; m < M; m++) { xr[m] = x + m * ldx; yr[m] = y + m * ldy; }
    int64_t P = (N + PANEL - 1) / PANEL;
    if (N * K < 65536) nthreads = 1; /* too small to pay for waking threads */
    /* ~8 chunks per thread (a preempted thread holds up little); prefill: an even number of panels;
     * decode: chunks over the first half of the panels (each panel brings its pair from the second) */
    int64_t span = M <= PANEL ? (P + 1) / 2 : P;
    int64_t chunk = (span / (8 * (nthreads > 0 ? nthreads : 1)) + 1) / 2 * 2;
    if (chunk < (M <= PANEL ? 4 : 8)) chunk = M <= PANEL ? 4 : 8;
    packed_ctx L = {wp, bias, P, N, K, chunk, (const float *const *)xr, (float *const *)yr, M, accumulate};
    run(packed_chunk, &L, (span + chunk - 1) / chunk, nthreads);
    free(xr);
    free(yr);
    return 0;
}
