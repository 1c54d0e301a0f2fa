"""Fused WKV-7 for training on a GPU: one Triton program per (sequence, head) runs the
recurrence token by token with the 64x64 state in registers.

Forward, per token t (S[i][j]: row i = value channel, column j = key channel):
    sa_i   = sum_j S[i][j] a_j
    S[i][j] = S[i][j] w_j + sa_i b_j + v_i k_j          (w = exp(logw))
    y_i    = sum_j S[i][j] r_j
The forward stores the state at the start of every chunk of CHUNK tokens. The backward walks
the chunks from the last to the first: it recomputes the chunk's states from that checkpoint
into a per-program scratch buffer (exactly the forward's arithmetic, so no division by w and no
growth of rounding errors), then runs the tokens of the chunk in reverse:
    dS    += dy r^T                 dr_j = sum_i S_t[i][j] dy_i
    dv_i   = sum_j dS[i][j] k_j     dk_j = sum_i dS[i][j] v_i
    dsa_i  = sum_j dS[i][j] b_j     db_j = sum_i dS[i][j] sa_i
    dw_j   = sum_i dS[i][j] S_{t-1}[i][j]     (dlogw = dw * w)
    da_j   = sum_i dsa_i S_{t-1}[i][j]
    dS     = dS diag(w) + dsa a^T   (the gradient of S_{t-1})
Only training from the zero state is supported (no s0, the final state is not returned);
train.py falls back to the chunked PyTorch WKV elsewhere and checks this kernel against it
before use (--selftest, and at start with --wkv auto)."""
import torch
import triton
import triton.language as tl

CHUNK = 16


@triton.jit
def _wkv_fwd(r_ptr, lw_ptr, k_ptr, v_ptr, a_ptr, b_ptr, y_ptr, ck_ptr, T, H,
             N: tl.constexpr, L: tl.constexpr):
    pid = tl.program_id(0)
    bb = pid // H
    hh = pid % H
    i = tl.arange(0, N)
    j = tl.arange(0, N)
    tile = i[:, None] * N + j[None, :]
    base = bb * T * H * N + hh * N
    stride_t = H * N
    nc = T // L
    S = tl.zeros((N, N), dtype=tl.float32)
    for c in range(nc):
        tl.store(ck_ptr + (pid * nc + c) * N * N + tile, S)
        for tt in range(L):
            off = base + (c * L + tt) * stride_t
            r = tl.load(r_ptr + off + j)
            w = tl.exp(tl.load(lw_ptr + off + j))
            k = tl.load(k_ptr + off + j)
            a = tl.load(a_ptr + off + j)
            b = tl.load(b_ptr + off + j)
            v = tl.load(v_ptr + off + i)
            sa = tl.sum(S * a[None, :], axis=1)
            S = S * w[None, :] + sa[:, None] * b[None, :] + v[:, None] * k[None, :]
            y = tl.sum(S * r[None, :], axis=1)
            tl.store(y_ptr + off + i, y)


@triton.jit
def _wkv_bwd(r_ptr, lw_ptr, k_ptr, v_ptr, a_ptr, b_ptr, dy_ptr, ck_ptr, scs_ptr, ssa_ptr,
             dr_ptr, dlw_ptr, dk_ptr, dv_ptr, da_ptr, db_ptr, T, H,
             N: tl.constexpr, L: tl.constexpr):
    pid = tl.program_id(0)
    bb = pid // H
    hh = pid % H
    i = tl.arange(0, N)
    j = tl.arange(0, N)
    tile = i[:, None] * N + j[None, :]
    base = bb * T * H * N + hh * N
    stride_t = H * N
    nc = T // L
    sbase = pid * L * N * N
    abase = pid * L * N
    dS = tl.zeros((N, N), dtype=tl.float32)
    for cc in range(nc):
        c = nc - 1 - cc
        S = tl.load(ck_ptr + (pid * nc + c) * N * N + tile)
        for tt in range(L):
            off = base + (c * L + tt) * stride_t
            w = tl.exp(tl.load(lw_ptr + off + j))
            k = tl.load(k_ptr + off + j)
            a = tl.load(a_ptr + off + j)
            b = tl.load(b_ptr + off + j)
            v = tl.load(v_ptr + off + i)
            sa = tl.sum(S * a[None, :], axis=1)
            tl.store(scs_ptr + sbase + tt * N * N + tile, S)
            tl.store(ssa_ptr + abase + tt * N + i, sa)
            S = S * w[None, :] + sa[:, None] * b[None, :] + v[:, None] * k[None, :]
        tl.debug_barrier()
        for tq in range(L):
            tt = L - 1 - tq
            off = base + (c * L + tt) * stride_t
            r = tl.load(r_ptr + off + j)
            w = tl.exp(tl.load(lw_ptr + off + j))
            k = tl.load(k_ptr + off + j)
            a = tl.load(a_ptr + off + j)
            b = tl.load(b_ptr + off + j)
            v = tl.load(v_ptr + off + i)
            dy = tl.load(dy_ptr + off + i)
            Sp = tl.load(scs_ptr + sbase + tt * N * N + tile)
            sa = tl.load(ssa_ptr + abase + tt * N + i)
            St = Sp * w[None, :] + sa[:, None] * b[None, :] + v[:, None] * k[None, :]
            dS = dS + dy[:, None] * r[None, :]
            tl.store(dr_ptr + off + j, tl.sum(St * dy[:, None], axis=0))
            tl.store(dv_ptr + off + i, tl.sum(dS * k[None, :], axis=1))
            tl.store(dk_ptr + off + j, tl.sum(dS * v[:, None], axis=0))
            dsa = tl.sum(dS * b[None, :], axis=1)
            tl.store(db_ptr + off + j, tl.sum(dS * sa[:, None], axis=0))
            tl.store(dlw_ptr + off + j, tl.sum(dS * Sp, axis=0) * w)
            tl.store(da_ptr + off + j, tl.sum(Sp * dsa[:, None], axis=0))
            dS = dS * w[None, :] + dsa[:, None] * a[None, :]
        tl.debug_barrier()


class _WKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, logw, k, v, a, b):
        B, T, H, N = r.shape
        ins = [x.detach().float().contiguous() for x in (r, logw, k, v, a, b)]
        y = torch.empty_like(ins[0])
        ck = torch.empty(B * H * (T // CHUNK) * N * N, device=r.device, dtype=torch.float32)
        _wkv_fwd[(B * H,)](*ins, y, ck, T, H, N=N, L=CHUNK, num_warps=4)
        ctx.save_for_backward(*ins, ck)
        ctx.dtypes = [x.dtype for x in (r, logw, k, v, a, b)]
        return y.to(r.dtype)

    @staticmethod
    def backward(ctx, dy):
        r, logw, k, v, a, b, ck = ctx.saved_tensors
        B, T, H, N = r.shape
        scs = torch.empty(B * H * CHUNK * N * N, device=r.device, dtype=torch.float32)
        ssa = torch.empty(B * H * CHUNK * N, device=r.device, dtype=torch.float32)
        grads = [torch.empty_like(x) for x in (r, logw, k, v, a, b)]
        _wkv_bwd[(B * H,)](r, logw, k, v, a, b, dy.float().contiguous(), ck, scs, ssa, *grads, T, H,
                           N=N, L=CHUNK, num_warps=4)
        return tuple(g.to(dt) for g, dt in zip(grads, ctx.dtypes))


def wkv_triton(r, logw, k, v, a, b, s0=None):
    """Same call as train.wkv_chunked for training: (B,T,H,N) inputs, zero initial state.
    Returns (y, None): the final state is not computed."""
    B, T, H, N = r.shape
    if s0 is not None or T % CHUNK or N != 64 or not r.is_cuda:
        raise ValueError("wkv_triton: zero initial state, T a multiple of 16, N = 64, CUDA tensors only")
    return _WKV.apply(r, logw, k, v, a, b), None
