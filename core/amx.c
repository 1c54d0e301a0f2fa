/*
 * amx.c - products with bf16 panel-held weights on Intel AMX tiles.
 *
 * A context turns this path on with rk_ctx_set_amx (off by default). The
 * rows of X are rounded to bf16 (round to nearest even) and multiplied by
 * the weights with TDPBF16PS, which sums pairs of bf16 products into fp32
 * tiles. The panel layout of bf16 weights (16 rows, column pairs: one 64-byte
 * line is columns k and k+1 of 16 rows, see rk__weight_pack) is the layout a
 * tile B operand wants, so 16 such lines are loaded as they lie in memory.
 * Each output row depends only on its own row of X, the weights and the
 * fixed order over the columns (32 at a time), never on the rows it shares
 * a tile with: results are the same bits for any number of rows in a pass.
 * They differ from the fp32 path by the rounding of X (about 2^-9 relative
 * per value), which is why the path is opt-in per context.
 *
 * Whether the tiles may be used is decided once per process, in cpu.c
 * (rk__amx_usable), which runs rk__amx_probe below with faults caught.
 * RWKVD_NO_AMX=1 turns the path off.
 */
#include "core_int.h"

#include <string.h>

#if defined(__x86_64__) && defined(__linux__)
#include <immintrin.h>

#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw")))
#define AMX_PF_BYTES 4096 /* how far ahead the first sweep fetches weights */
#define AMX_CHUNK_BYTES (512 * 1024) /* weights kept in L2 per sweep of X */

/* Tile configuration (palette 1): every tile 16 rows of 64 bytes. Tiles 0-3
 * accumulate (fp32 16x16), 4-5 hold rows of X, 6-7 weight panels. */
struct tilecfg {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed, aligned(64)));

/* Loads the configuration into the calling thread's tile registers. Done at
 * every product (a few hundred cycles against a product of microseconds at
 * least), so that nothing else in the process that uses tiles can leave
 * them configured otherwise under us. */
AMX_TARGET static void configure_thread(void)
{
    struct tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) {
        cfg.rows[i] = 16;
        cfg.colsb[i] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* The probe product (cpu.c runs it with SIGILL and SIGSEGV caught): 16 rows
 * of X all 1.0 and a panel of 0.5, so every output is 32 * 0.5 = 16. */
AMX_TARGET bool rk__amx_probe(void)
{
    static uint16_t A[16 * 32], B[16 * 32];
    static float Cout[16 * 16];
    for (int i = 0; i < 16 * 32; i++) {
        A[i] = 0x3F80; /* 1.0 */
        B[i] = 0x3F00; /* 0.5 */
    }
    configure_thread();
    _tile_zero(0);
    _tile_loadd(4, A, 64);
    _tile_loadd(6, B, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_stored(0, Cout, 64);
    for (int i = 0; i < 16 * 16; i++)
        if (Cout[i] != 16.0f)
            return false;
    return true;
}

/* n rows of X (cols floats each) to bf16, round to nearest even (NaN stays
 * NaN), into xb with the same row stride. */
AMX_TARGET void rk__amx_round(uint16_t *xb, const float *X, size_t n, size_t cols)
{
    const __m512i bias = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1);
    const __m512i quiet = _mm512_set1_epi32(0x00400000);
    size_t total = n * cols, i = 0;
    for (; i + 16 <= total; i += 16) {
        __m512 x = _mm512_loadu_ps(X + i);
        __m512i u = _mm512_castps_si512(x);
        __m512i r = _mm512_add_epi32(
            u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
        __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, quiet));
        _mm256_storeu_si256((__m256i *)(xb + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
    }
    for (; i < total; i++)
        xb[i] = rk__f32_to_bf16(X[i]);
}

/* One block: np (1 or 2) panels at P0, P0 + 16 * cols against nx (1 or 2)
 * tiles of 16 rows of xb from row t; results to Y rows t.. (only the first
 * `valid` rows exist in Y), columns c0... */
AMX_TARGET static void block(float *Y, size_t ldy, size_t c0, const uint16_t *xb, size_t cols,
                             size_t t, size_t valid, const uint16_t *P0, int np, int nx,
                             float *spill)
{
    const uint16_t *X0 = xb + t * cols, *X1 = X0 + 16 * cols, *P1 = P0 + 16 * cols;
    size_t ldx = cols * sizeof(uint16_t);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (size_t kb = 0; kb < cols; kb += 32) {
        if (t == 0) /* first sweep over these panels: fetch ahead from memory */
            for (int l = 0; l < 16; l++) {
                _mm_prefetch((const char *)(P0 + kb * 16) + AMX_PF_BYTES + 64 * l, _MM_HINT_T0);
                if (np == 2)
                    _mm_prefetch((const char *)(P1 + kb * 16) + AMX_PF_BYTES + 64 * l,
                                 _MM_HINT_T0);
            }
        _tile_loadd(4, X0 + kb, ldx);
        _tile_loadd(6, P0 + kb * 16, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (np == 2) {
            _tile_loadd(7, P1 + kb * 16, 64);
            _tile_dpbf16ps(1, 4, 7);
        }
        if (nx == 2) {
            _tile_loadd(5, X1 + kb, ldx);
            _tile_dpbf16ps(2, 5, 6);
            if (np == 2)
                _tile_dpbf16ps(3, 5, 7);
        }
    }
    /* a tile of 16 rows whose rows are all in Y is stored in place; the
     * last, partial one goes through `spill` */
    for (int q = 0; q < 2 * nx; q++) {
        int xi = q / 2, pi = q % 2;
        if (pi >= np)
            continue;
        size_t r0 = t + 16 * (size_t)xi;
        if (r0 >= valid)
            continue;
        float *dst = Y + r0 * ldy + c0 + 16 * (size_t)pi;
        bool full = r0 + 16 <= valid;
        float *to = full ? dst : spill;
        size_t ld = full ? ldy * sizeof(float) : 64;
        switch (q) {
        case 0: _tile_stored(0, to, ld); break;
        case 1: _tile_stored(1, to, ld); break;
        case 2: _tile_stored(2, to, ld); break;
        default: _tile_stored(3, to, ld); break;
        }
        if (!full)
            for (size_t i = 0; i < valid - r0; i++)
                memcpy(dst + i * ldy, spill + 16 * i, 16 * sizeof(float));
    }
}

AMX_TARGET void rk__amx_rows(float *Y, size_t ldy, int yoff, const uint16_t *xb, size_t n,
                             const struct rk_weight *W, int r0, int r1)
{
    size_t cols = (size_t)W->cols;
    configure_thread();
    float spill[16 * 16] __attribute__((aligned(64)));
    const uint16_t *base = W->data;
    /* xb holds n rows; the rows after them up to the next multiple of 16 are
     * read by the last tile but left as they are: a tile row only feeds its
     * own output row, and those outputs are never stored */
    size_t n16 = (n + 15) & ~(size_t)15;
    /* The weight rows in chunks of about AMX_CHUNK_BYTES (whole pairs of
     * panels), which stay in L2 while every 32 rows of X pass over the
     * chunk's pairs; X is thus read once per chunk, the weights once. */
    int chunk = (int)(AMX_CHUNK_BYTES / (cols * sizeof(uint16_t))) & ~31;
    if (chunk < 32)
        chunk = 32;
    for (int c0 = r0; c0 < r1; c0 += chunk) {
        int c1 = c0 + chunk < r1 ? c0 + chunk : r1;
        for (size_t t = 0; t < n16; t += 32) {
            int nx = n16 - t >= 32 ? 2 : 1;
            for (int r = c0; r < c1; r += 32) {
                int np = c1 - r >= 32 ? 2 : 1;
                block(Y, ldy, (size_t)(r - yoff), xb, cols, t, n, base + (size_t)r * cols, np,
                      nx, spill);
            }
        }
    }
}

bool rk__amx_fits(const struct rk_weight *W)
{
    return W->panel && W->dtype == RK_DTYPE_BF16 && W->cols % 32 == 0 && W->rows % 16 == 0;
}

#else /* no AMX on this platform */

bool rk__amx_probe(void) { return false; }
bool rk__amx_fits(const struct rk_weight *W)
{
    (void)W;
    return false;
}
void rk__amx_round(uint16_t *xb, const float *X, size_t n, size_t cols)
{
    (void)xb, (void)X, (void)n, (void)cols;
}
void rk__amx_rows(float *Y, size_t ldy, int yoff, const uint16_t *xb, size_t n,
                  const struct rk_weight *W, int r0, int r1)
{
    (void)Y, (void)ldy, (void)yoff, (void)xb, (void)n, (void)W, (void)r0, (void)r1;
}
#endif
