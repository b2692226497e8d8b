/* Small-batch float32 CPU kernels for the shard (AVX2 + FMA, OpenMP), loaded with ctypes.
 *
 * Decode multiplies a handful of token rows by large weight matrices: the cost is reading the weights
 * once from memory. Both kernels stream each weight row once and dot it with every input row while the
 * row is in L1 (tiles of 4 weight rows x 3 input rows in registers); the inputs stay in L1/L2.
 *
 * ck_linear: y[m, n] (+)= sum_k x[m, k] * w[n, k] (+ bias[n]) for m < M, n < N: a row-major float32
 *   weight [N, K] with row stride ldw, inputs/outputs with row strides ldx/ldy, unit column stride.
 * ck_lora: BGMV over segments: for segment s (token rows rows[seg[s]..seg[s+1]]), with that adapter's
 *   table entry e = tables[s] + 5 * entry = {A_s ptr, lda, B_s ptr, ldb, r_s} (A_s [r_s, K], B_s [N, r_s]
 *   already scaled; A ptr 0: the adapter lacks this module): y[t, :] += B_s @ (A_s @ x[t, :]). Segments own disjoint rows, so they run in parallel; with fewer
 *   segments than 2 x threads each segment's shrink and expand are split over rows instead.
 * Summation order differs from BLAS only by float rounding. No allocation except ck_lora's scratch.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef RW
#define RW 3 /* weight rows per tile */
#endif
#ifndef MX
#define MX 3 /* input rows per tile */
#endif
#ifndef PF_ROWS
#define PF_ROWS 8 /* software prefetch distance, in weight rows */
#endif

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* out[i][j] = dot(w[i], x[j]) over K, for i < rw, j < mx (compile-time constants after inlining). */
static inline __attribute__((always_inline)) void tile(const float *const *w, const float *const *x,
                                                       int64_t K, float out[RW][MX], int rw, int mx,
                                                       const float *pf, int64_t ldw, int64_t *poff,
                                                       int *cnt, int every) {
    __m256 acc[RW][MX];
    for (int i = 0; i < rw; i++)
        for (int j = 0; j < mx; j++) acc[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 xv[MX];
        for (int j = 0; j < mx; j++) xv[j] = _mm256_loadu_ps(x[j] + k);
        if (pf && --*cnt == 0) {
            *cnt = every;
            if (*poff < K)
                for (int i = 0; i < RW; i++) _mm_prefetch((const char *)(pf + i * ldw + *poff), _MM_HINT_T0);
            *poff += 16;
        }
        for (int i = 0; i < rw; i++) {
            __m256 wv = _mm256_loadu_ps(w[i] + k);
            for (int j = 0; j < mx; j++) acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < rw; i++)
        for (int j = 0; j < mx; j++) {
            float s = hsum(acc[i][j]);
            for (int64_t kk = k; kk < K; kk++) s += w[i][kk] * x[j][kk];
            out[i][j] = s;
        }
}

#define TILES(ww, oo, rwv, pfv)                                        \
    switch (mx) {                                                      \
    TILE_CASE4(ww, oo, rwv, pfv)                                       \
    TILE_CASE3(ww, oo, rwv, pfv)                                       \
    case 2: tile(ww, x, K, oo, rwv, 2, pfv, ldw, &poff, &cnt, every); break;               \
    default: tile(ww, x, K, oo, rwv, 1, pfv, ldw, &poff, &cnt, every); break;              \
    }
#if MX >= 4
#define TILE_CASE4(ww, oo, rwv, pfv) case 4: tile(ww, x, K, oo, rwv, 4, pfv, ldw, &poff, &cnt, every); break;
#else
#define TILE_CASE4(ww, oo, rwv, pfv)
#endif
#if MX >= 3
#define TILE_CASE3(ww, oo, rwv, pfv) case 3: tile(ww, x, K, oo, rwv, 3, pfv, ldw, &poff, &cnt, every); break;
#else
#define TILE_CASE3(ww, oo, rwv, pfv)
#endif

/* Weight rows [n0, n1) against all M input rows (xr: row pointers); y rows yr; column n of y. */
static void rows_block(const float *w, int64_t ldw, int64_t n0, int64_t n1, const float *const *xr,
                       float *const *yr, int M, int64_t K, const float *bias, int accumulate) {
    float out[RW][MX];
    for (int64_t n = n0; n < n1; n += RW) {
        int rw = (int)(n1 - n < RW ? n1 - n : RW);
        const float *wr[RW];
        for (int i = 0; i < RW; i++) wr[i] = w + (n + (i < rw ? i : 0)) * ldw;
        int every = 2 * ((M + MX - 1) / MX), cnt = every;
        int64_t poff = 0;
        for (int m = 0; m < M; m += MX) {
            int mx = M - m < MX ? M - m : MX;
            const float *const *x = xr + m;
/* prefetch the rows PF_ROWS ahead (one core's hardware prefetchers keep too few DRAM reads in
             * flight), one line per row every `every` iterations, spread over all the passes */
            const float *pf = n + PF_ROWS + RW <= n1 ? w + (n + PF_ROWS) * ldw : NULL;
            if (rw == RW) {
                TILES(wr, out, RW, pf)
            } else { /* leftover rows: one at a time */
                for (int i = 0; i < rw; i++) {
                    const float *w1[RW];
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

/* This thread's share [*a, *b) of n rows, in multiples of RW. */
static void share(int64_t n, int tid, int nt, int64_t *a, int64_t *b) {
    int64_t tiles = (n + RW - 1) / RW, per = tiles / nt, extra = tiles % nt;
    int64_t t0 = tid * per + (tid < extra ? tid : extra), t1 = t0 + per + (tid < extra ? 1 : 0);
    *a = t0 * RW < n ? t0 * RW : n;
    *b = t1 * RW < n ? t1 * RW : n;
}

#define MAX_M 256

int ck_max_m(void) { return MAX_M; }

int ck_linear(const float *x, int64_t ldx, const float *w, int64_t ldw, const float *bias, float *y,
              int64_t ldy, int M, int64_t N, int64_t K, int accumulate, int nthreads) {
    if (M < 1 || M > MAX_M) return -1;
    const float *xr[MAX_M];
    float *yr[MAX_M];
    for (int m = 0; m < M; m++) { xr[m] = x + m * ldx; yr[m] = y + m * ldy; }
    if (nthreads < 1) nthreads = 1;
    if (N * K < 65536) nthreads = 1; /* too small to pay for waking threads */
    /* dynamic chunks of ~1/8 of a thread's share: a thread preempted by other load does not hold up
     * the others at the end of the call */
    int64_t chunk = (N / (8 * nthreads) + RW - 1) / RW * RW;
    if (chunk < 16 * RW) chunk = 16 * RW;
    int64_t nchunks = (N + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) if (nthreads > 1)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t a = c * chunk, b = a + chunk < N ? a + chunk : N;
        rows_block(w, ldw, a, b, xr, yr, M, K, bias, accumulate);
    }
    return 0;
}

/* One segment's shrink (xa = x A^T into scratch rows) then expand (y += xa B^T); with nt > 1 the
 * calling team splits both over rows, with a barrier in between (every thread must call it). */
static void segment(const float *x, int64_t ldx, float *y, int64_t ldy, const int32_t *seg,
                    const int32_t *rows, const float *A, int64_t lda, const float *B, int64_t ldb, int r,
                    int64_t N, int64_t K, float *scratch, int rmax, int s, int tid, int nt) {
    int M = seg[s + 1] - seg[s];
    const float *xr[MAX_M], *ar[MAX_M];
    float *yr[MAX_M], *xa[MAX_M];
    for (int m = 0; m < M; m++) {
        xr[m] = x + (int64_t)rows[seg[s] + m] * ldx;
        yr[m] = y + (int64_t)rows[seg[s] + m] * ldy;
        xa[m] = scratch + (int64_t)(seg[s] + m) * rmax;
        ar[m] = xa[m];
    }
    int64_t a, b;
    share(r, tid, nt, &a, &b);
    if (M > 0) rows_block(A, lda, a, b, xr, xa, M, K, NULL, 0);
    if (nt > 1) {
#pragma omp barrier
    }
    share(N, tid, nt, &a, &b);
    if (M > 0) rows_block(B, ldb, a, b, ar, yr, M, r, NULL, 1);
}

int ck_lora(const float *x, int64_t ldx, float *y, int64_t ldy, int nseg, const int32_t *seg,
            const int32_t *rows, const int64_t *const *tables, int64_t entry, int64_t N, int64_t K,
            int nthreads) {
    int T = seg[nseg], rmax = 0;
    for (int s = 0; s < nseg; s++) {
        const int64_t *e = tables[s] + 5 * entry;
        if (seg[s + 1] - seg[s] > MAX_M) return -1;
        if (e[0] && e[4] > rmax) rmax = (int)e[4];
    }
    if (T == 0 || rmax == 0) return 0;
    float *scratch = (float *)malloc(sizeof(float) * (size_t)T * (size_t)rmax);
    if (!scratch) return -2;
    if (nthreads < 1) nthreads = 1;
    int by_segment = nseg >= 2 * nthreads || nthreads == 1;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        if (by_segment) {
#pragma omp for schedule(dynamic, 1)
            for (int s = 0; s < nseg; s++) {
                const int64_t *e = tables[s] + 5 * entry;
                if (e[0])
                    segment(x, ldx, y, ldy, seg, rows, (const float *)e[0], e[1], (const float *)e[2], e[3],
                            (int)e[4], N, K, scratch, rmax, s, 0, 1);
            }
        } else {
            for (int s = 0; s < nseg; s++) {
                const int64_t *e = tables[s] + 5 * entry;
                if (e[0])
                    segment(x, ldx, y, ldy, seg, rows, (const float *)e[0], e[1], (const float *)e[2], e[3],
                            (int)e[4], N, K, scratch, rmax, s, tid, nt);
            }
        }
    }
    free(scratch);
    return 0;
}
