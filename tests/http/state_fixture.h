/*
 * state_fixture.h - helpers shared by the state-store unit tests and the HTTP
 * tests: deterministic random states and a writer for RWKV-PEFT style .pth
 * state checkpoints (a stored zip holding data.pkl, a protocol-2 pickle of
 * {"blocks.{i}.att.time_state": tensor}, and one raw storage per tensor),
 * byte-compatible with what torch.save writes for such a dict.
 */
#ifndef RK_STATE_FIXTURE_H
#define RK_STATE_FIXTURE_H

#include "rk_adapters.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fill state [rk_state_len] with small values from a seeded generator. */
static inline void fx_random_state(const struct rk_model *m, uint64_t seed, float *state)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    size_t n = rk_state_len(m);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state[i] = ((float)(x >> 40) / (float)(1 << 24) - 0.5f) * 2.0f;
    }
}

struct fx_buf {
    uint8_t *p;
    size_t n, cap;
};

static inline void fx_put(struct fx_buf *b, const void *s, size_t n)
{
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 4096;
        while (nc < b->n + n)
            nc *= 2;
        b->p = realloc(b->p, nc);
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static inline void fx_u8(struct fx_buf *b, uint8_t v) { fx_put(b, &v, 1); }
static inline void fx_u16(struct fx_buf *b, uint16_t v)
{
    uint8_t t[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    fx_put(b, t, 2);
}
static inline void fx_u32(struct fx_buf *b, uint32_t v)
{
    uint8_t t[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    fx_put(b, t, 4);
}
static inline void fx_pk_str(struct fx_buf *b, const char *s)
{
    fx_u8(b, 'X');
    fx_u32(b, (uint32_t)strlen(s));
    fx_put(b, s, strlen(s));
}
static inline void fx_pk_int(struct fx_buf *b, int32_t v)
{
    fx_u8(b, 'J');
    fx_u32(b, (uint32_t)v);
}
static inline void fx_pk_global(struct fx_buf *b, const char *mod, const char *name)
{
    fx_u8(b, 'c');
    fx_put(b, mod, strlen(mod));
    fx_u8(b, '\n');
    fx_put(b, name, strlen(name));
    fx_u8(b, '\n');
}

/* Build a .pth state checkpoint of the wkv parts of `state`. bf16 selects
 * BFloat16Storage (the RWKV-PEFT default) instead of FloatStorage. */
static inline void fx_build_pth(const struct rk_model *m, const float *state, bool bf16,
                                void **out, size_t *len)
{
    const int L = rk_model_n_layer(m), H = rk_model_n_head(m), N = rk_model_head_size(m);
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    struct fx_buf pk = {0};
    fx_u8(&pk, 0x80);
    fx_u8(&pk, 2);
    fx_u8(&pk, '}');
    fx_u8(&pk, '(');
    for (int i = 0; i < L; i++) {
        char name[64], key[16];
        snprintf(name, sizeof name, "blocks.%d.att.time_state", i);
        snprintf(key, sizeof key, "%d", i);
        fx_pk_str(&pk, name);
        fx_pk_global(&pk, "torch._utils", "_rebuild_tensor_v2");
        fx_u8(&pk, '(');
        fx_u8(&pk, '(');
        fx_pk_str(&pk, "storage");
        fx_pk_global(&pk, "torch", bf16 ? "BFloat16Storage" : "FloatStorage");
        fx_pk_str(&pk, key);
        fx_pk_str(&pk, "cpu");
        fx_pk_int(&pk, H * N * N);
        fx_u8(&pk, 't');
        fx_u8(&pk, 'Q');
        fx_pk_int(&pk, 0);
        fx_u8(&pk, '(');
        fx_pk_int(&pk, H);
        fx_pk_int(&pk, N);
        fx_pk_int(&pk, N);
        fx_u8(&pk, 't');
        fx_u8(&pk, '(');
        fx_pk_int(&pk, N * N);
        fx_pk_int(&pk, N);
        fx_pk_int(&pk, 1);
        fx_u8(&pk, 't');
        fx_u8(&pk, 0x89);
        fx_pk_global(&pk, "collections", "OrderedDict");
        fx_u8(&pk, ')');
        fx_u8(&pk, 'R');
        fx_u8(&pk, 't');
        fx_u8(&pk, 'R');
        fx_u8(&pk, 'q'); // memoize, as torch.save does
        fx_u8(&pk, (uint8_t)i);
    }
    fx_u8(&pk, 'u');
    fx_u8(&pk, '.');

    // zip: entries "archive/data.pkl" and "archive/data/{i}", stored
    struct fx_buf z = {0}, cd = {0};
    int n_ent = 0;
    for (int e = -1; e < L; e++) {
        char name[64];
        struct fx_buf data = {0};
        if (e < 0) {
            snprintf(name, sizeof name, "archive/data.pkl");
            fx_put(&data, pk.p, pk.n);
        } else {
            snprintf(name, sizeof name, "archive/data/%d", e);
            const float *w = state + (size_t)e * lay.layer_stride + lay.wkv;
            for (size_t k = 0; k < lay.wkv_len; k++) {
                if (bf16) {
                    uint32_t u;
                    memcpy(&u, &w[k], 4);
                    fx_u16(&data, (uint16_t)(u >> 16)); // truncation: tests compare to this
                } else {
                    fx_put(&data, &w[k], 4);
                }
            }
        }
        uint32_t off = (uint32_t)z.n;
        uint16_t nl = (uint16_t)strlen(name);
        fx_u32(&z, 0x04034b50u);
        fx_u16(&z, 20); fx_u16(&z, 0); fx_u16(&z, 0); fx_u16(&z, 0); fx_u16(&z, 0);
        fx_u32(&z, 0); // crc (not checked by rwkvd)
        fx_u32(&z, (uint32_t)data.n);
        fx_u32(&z, (uint32_t)data.n);
        fx_u16(&z, nl);
        fx_u16(&z, 0);
        fx_put(&z, name, nl);
        fx_put(&z, data.p, data.n);
        fx_u32(&cd, 0x02014b50u);
        fx_u16(&cd, 20); fx_u16(&cd, 20); fx_u16(&cd, 0); fx_u16(&cd, 0);
        fx_u16(&cd, 0); fx_u16(&cd, 0);
        fx_u32(&cd, 0);
        fx_u32(&cd, (uint32_t)data.n);
        fx_u32(&cd, (uint32_t)data.n);
        fx_u16(&cd, nl); fx_u16(&cd, 0); fx_u16(&cd, 0); fx_u16(&cd, 0); fx_u16(&cd, 0);
        fx_u32(&cd, 0);
        fx_u32(&cd, off);
        fx_put(&cd, name, nl);
        free(data.p);
        n_ent++;
    }
    uint32_t cd_off = (uint32_t)z.n;
    fx_put(&z, cd.p, cd.n);
    fx_u32(&z, 0x06054b50u);
    fx_u16(&z, 0); fx_u16(&z, 0);
    fx_u16(&z, (uint16_t)n_ent); fx_u16(&z, (uint16_t)n_ent);
    fx_u32(&z, (uint32_t)cd.n);
    fx_u32(&z, cd_off);
    fx_u16(&z, 0);
    free(cd.p);
    free(pk.p);
    *out = z.p;
    *len = z.n;
}

/* The wkv part of `state` as a .pth with bf16 storage would hold it. */
static inline float fx_bf16_trunc(float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    u &= 0xffff0000u;
    memcpy(&v, &u, 4);
    return v;
}

#endif
