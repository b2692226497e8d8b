/* The decoder stack of one batch in one call (CPU float32, one rank), compiled in one unit
 * after cpu_kernels.c and cpu_step.c (shard.model.cpu_kernels builds them together), whose kernels it
 * chains: per layer, exactly the operations of shard.model.llama's layer forward in the same order:
 *   x = rmsnorm(res += h)              (layer 0: res = h, x = rmsnorm(h))
 *   qkv = x Wqkv^T + bqkv; += LoRA q, k, v (per token's adapter)
 *   rotary on q, k; k, v of every row into their KV slots; then each row (decode or prefill) attends to
 *   the first lens[t] keys of its block table (lens[t] = its position + 1: causal)
 *   h = attn Wo^T; += LoRA o; += bo
 *   x = rmsnorm(res += h)
 *   gu = x Wgu^T + bgu; += LoRA gate, up; act = silu(gate) * up
 *   h = act Wdown^T; += LoRA down; += bdown
 * Why: at decode sizes the per-operation cost of calling ~12 kernels per layer from Python (argument
 * checks, tensor allocation, waking the pool's worker after single-threaded work) is a third of the
 * step (and of a short prefill); here the worker stays hot and attention runs on the pool too (one row
 * per chunk).
 * Weights are packed (ck_linear_packed); biases may be NULL. Returns 0; -1: a KV slot or block table
 * page outside the pool (checked before it is written or read); -2: a kernel refused its shapes. */

typedef struct {
    const float *ln1, *ln2, *wqkv, *bqkv, *wo, *bo, *wgu, *bgu, *wdown, *bdown;
    float *kc, *vc;
} cd_layer;

typedef struct {
    int64_t T, H, Hq, Hk, D, I;        /* token rows, hidden, heads, head dim, MLP */
    float eps, scale;                  /* RMSNorm epsilon, attention scale 1/sqrt(D) */
    float *h, *res;                    /* [T, H]; in: h = embeddings; out: h = last MLP output, res */
    float *x, *qkv, *attn, *gu, *act;  /* scratch [T, H], [T, (Hq+2Hk) D], [T, Hq D], [T, 2I], [T, I] */
    const float *cosv, *sinv;          /* [T, D] rows, row stride ldc */
    int64_t ldc;
    const int64_t *slots, *tables, *lens; /* [T], [T, ldt] block tables, [T] keys each row attends to */
    int64_t ldt, page_stride, slot_stride, block_size, num_pages;
    int64_t nseg;                      /* LoRA segments (0: no LoRA) as ck_lora takes them */
    const int32_t *seg, *rows;
    const int64_t *const *ltables;
    int64_t nmod;                      /* entries per layer in the adapter tables */
    int64_t mods[7];                   /* table index of q, k, v, o, gate, up, down (-1: none) */
    int64_t nthreads;
} cd_step;

typedef struct {
    const cd_step *s;
    const cd_layer *l;
    _Atomic int err;
} attn_ctx;

static void attn_chunk(const void *p, int64_t t) { /* one row */
    attn_ctx *A = (attn_ctx *)p;
    const cd_step *s = A->s;
    int64_t nqkv = (s->Hq + 2 * s->Hk) * s->D, nq = s->Hq * s->D;
    int rc = cs_decode_attn(s->qkv + t * nqkv, nqkv, 1, NULL, (int)s->Hq, (int)s->Hk, (int)s->D, A->l->kc,
                            A->l->vc, s->page_stride, s->slot_stride, s->block_size, s->num_pages,
                            s->tables + t * s->ldt, s->ldt, s->lens + t, s->attn + t * nq, nq, s->scale);
    if (rc) atomic_store(&A->err, rc);
}

static int lora(const cd_step *s, int layer, int which, const float *x, int64_t ldx, float *y, int64_t ldy,
                int64_t N, int64_t K) {
    if (s->nseg == 0 || s->mods[which] < 0) return 0;
    return ck_lora(x, ldx, y, ldy, (int)s->nseg, s->seg, s->rows, s->ltables, layer * s->nmod + s->mods[which],
                   N, K, (int)s->nthreads) ? -2 : 0;
}

static void add_bias(float *y, const float *b, int64_t T, int64_t N) {
    if (b)
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++) y[t * N + n] += b[n];
}

int cd_decode_layers(const cd_step *s, const cd_layer *layers, int nlayers) {
    const int64_t T = s->T, H = s->H, I = s->I, nq = s->Hq * s->D, nk = s->Hk * s->D, nqkv = nq + 2 * nk;
    const int nt = (int)s->nthreads;
    if (T < 1) return 0;
    for (int l = 0; l < nlayers; l++) {
        const cd_layer *L = &layers[l];
        if (l == 0) {
            memcpy(s->res, s->h, sizeof(float) * (size_t)(T * H));
            cs_rmsnorm(s->h, H, NULL, 0, L->ln1, s->x, H, T, H, s->eps);
        } else {
            cs_rmsnorm(s->h, H, s->res, H, L->ln1, s->x, H, T, H, s->eps);
        }
        if (ck_linear_packed(s->x, H, L->wqkv, L->bqkv, s->qkv, nqkv, (int)T, nqkv, H, 0, nt)) return -2;
        if (lora(s, l, 0, s->x, H, s->qkv, nqkv, nq, H) || lora(s, l, 1, s->x, H, s->qkv + nq, nqkv, nk, H)
            || lora(s, l, 2, s->x, H, s->qkv + nq + nk, nqkv, nk, H))
            return -2;
        if (cs_rope_store(s->qkv, nqkv, T, (int)s->Hq, (int)s->Hk, (int)s->D, s->cosv, s->sinv, s->ldc, s->slots,
                          L->kc, L->vc, s->page_stride, s->slot_stride, s->block_size, s->num_pages))
            return -1;
        attn_ctx A = {s, L, 0};
        run(attn_chunk, &A, T, nt);
        if (atomic_load(&A.err)) return atomic_load(&A.err) == -1 ? -1 : -2;
        if (ck_linear_packed(s->attn, nq, L->wo, NULL, s->h, H, (int)T, H, nq, 0, nt)) return -2;
        if (lora(s, l, 3, s->attn, nq, s->h, H, H, nq)) return -2;
        add_bias(s->h, L->bo, T, H);
        cs_rmsnorm(s->h, H, s->res, H, L->ln2, s->x, H, T, H, s->eps);
        if (ck_linear_packed(s->x, H, L->wgu, L->bgu, s->gu, 2 * I, (int)T, 2 * I, H, 0, nt)) return -2;
        if (lora(s, l, 4, s->x, H, s->gu, 2 * I, I, H) || lora(s, l, 5, s->x, H, s->gu + I, 2 * I, I, H))
            return -2;
        cs_silu_mul(s->gu, s->gu + I, 2 * I, T, I, s->act, I);
        if (ck_linear_packed(s->act, I, L->wdown, NULL, s->h, H, (int)T, H, I, 0, nt)) return -2;
        if (lora(s, l, 6, s->act, I, s->h, H, H, I)) return -2;
        add_bias(s->h, L->bdown, T, H);
    }
    return 0;
}
