"""Independent NumPy reference of the RWKV forward pass (v4, v5.1, v5.2, v6, v7).

Written from the published math (RWKV-LM papers, the RWKV authors' model code) for checking our
C engine; it is deliberately plain and slow. Everything is computed in float64.

Conventions, as the tensors of an rwkv.cpp model file hold them (shapes are PyTorch order, i.e.
the reverse of the file's dims):

- every linear weight `W` is (out, in): `y = x @ W.T`; that includes the low-rank matrices of v6
  and v7, which rwkv.cpp stores transposed against the official checkpoints:
  v6 `time_maa_w1` (5*D, C), `time_maa_w2` (5, C, D), `time_decay_w1` (D, C), `time_decay_w2`
  (C, D); v7 `w1 a1 v1 g1` (D, C), `w2 a2 v2 g2` (C, D).
- v4 `time_decay` is stored as `-exp(w)` and `time_first` raw (C,).
- v5.1 `time_decay` is stored as `exp(-exp(w))` and `time_first` as `exp(u)`, both one value per
  head, (n_head, 1, 1). There is no gate.
- v5.2 `time_decay` is stored as `exp(-exp(w))` and `time_faaaa` is the raw bonus `u`, both
  (n_head, head_size, 1); the gate is `silu(gate.weight @ gx)`.
- v6 `time_decay` is the raw `w` base (n_head, head_size, 1), decayed per token by
  `exp(-exp(w + lora(x)))`; `time_faaaa` raw `u` (n_head, head_size, 1).
- v7 `att.x_rwkvag` (6, 1, C) stacks the token-shift mixes of r, w, k, v, a, g; `w0 a0 v0 k_k
  k_a` and `ffn.x_k` are (1, 1, C); `r_k` is (n_head, head_size); layer 0 has no v0/v1/v2 (its
  value is the `v_first` that later layers mix in).
- `blocks.0.ln0` normalizes the embedding before the first layer.

State (rwkv.cpp's layout, float32, layer after layer):
- v4: 5 vectors of n_embed per layer: `ffn_xx, att_xx, att_aa, att_bb, att_pp`; a fresh state is
  zeros except `att_pp = -1e30`.
- v5, v6, v7: `2 + head_size` vectors of n_embed per layer: `ffn_xx, att_xx`, then the n_head
  matrices head_size x head_size of the attention state. A fresh state is zeros.
  Orientation of the head matrices (element at offset h*N*N + i*N + j):
    v5.1, v5.2, v6: KEY index major:   [h, key i, value j]
    v7:             VALUE index major: [h, value i, key j]
  (this module computes with value-major matrices S, so y = S r, and transposes v5/v6 states
  when reading and writing them).
`*_xx` are the layer-normed inputs of the last token (for the token shift).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rwkv_cli.formats.modelfile import detect_arch, read_model

LN_EPS = 1e-5  # every LayerNorm
V6_V7_LN_X_EPS = 64e-5  # the per-head group norm of v6 and v7
V7_DECAY_SCALE = np.exp(-0.5)  # v7 decay = exp(-exp(-0.5) * sigmoid(w))
V4_FRESH_PP = -1e30


# ----------------------------------------------------------------------------------------------
# Elementwise pieces (x is (T, C): T tokens of one sequence)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = LN_EPS):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def group_norm(x: np.ndarray, weight, bias, n_head: int, eps: float):
    """LayerNorm of each head's head_size values, then a per-channel affine."""
    t, c = x.shape
    heads = x.reshape(t, n_head, c // n_head)
    mean = heads.mean(axis=-1, keepdims=True)
    var = ((heads - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((heads - mean) / np.sqrt(var + eps)).reshape(t, c) * weight + bias


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def relu_squared(x):
    return np.maximum(x, 0.0) ** 2


def token_shift(x: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The previous token's row for every row of x; `last` (from the state) precedes row 0."""
    return np.concatenate([last[None, :], x[:-1]], axis=0)


def lerp_mix(x, prev, mix):
    """v4/v5 token shift: `mix` of the current token, `1 - mix` of the previous one."""
    return x * mix + prev * (1.0 - mix)


# ----------------------------------------------------------------------------------------------
# Channel mix (FFN)


def channel_mix_v4(p, x, prev):
    """v4, v5: squared-ReLU MLP gated by sigmoid(receptance)."""
    kx = lerp_mix(x, prev, p["ffn.time_mix_k"])
    rx = lerp_mix(x, prev, p["ffn.time_mix_r"])
    r = sigmoid(rx @ p["ffn.receptance.weight"].T)
    return r * (relu_squared(kx @ p["ffn.key.weight"].T) @ p["ffn.value.weight"].T)


def channel_mix_v6(p, x, prev):
    """v6: as v4 with the mix written as x + (prev - x) * maa."""
    kx = x + (prev - x) * p["ffn.time_maa_k"]
    rx = x + (prev - x) * p["ffn.time_maa_r"]
    r = sigmoid(rx @ p["ffn.receptance.weight"].T)
    return r * (relu_squared(kx @ p["ffn.key.weight"].T) @ p["ffn.value.weight"].T)


def channel_mix_v7(p, x, prev):
    """v7: no receptance gate."""
    kx = x + (prev - x) * p["ffn.x_k"]
    return relu_squared(kx @ p["ffn.key.weight"].T) @ p["ffn.value.weight"].T


# ----------------------------------------------------------------------------------------------
# Time mix (attention). Each takes the layer's params, the layer-normed input x (T, C), the
# shifted input prev (T, C) and the layer's recurrent state; it returns (out (T, C), state).


def time_mix_v4(p, x, prev, aa, bb, pp):
    """v4 WKV with the running exponent pp that keeps exp() finite:
    wkv_t = (sum_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u + k_t} v_t)
            / (sum_{i<t} e^{-(t-1-i)w + k_i}     + e^{u + k_t}),
    with aa = numerator sum, bb = denominator sum, both scaled by e^{-pp}.
    """
    decay = p["att.time_decay"]  # stored -exp(w)
    first = p["att.time_first"]  # u
    k = lerp_mix(x, prev, p["att.time_mix_k"]) @ p["att.key.weight"].T
    v = lerp_mix(x, prev, p["att.time_mix_v"]) @ p["att.value.weight"].T
    r = sigmoid(lerp_mix(x, prev, p["att.time_mix_r"]) @ p["att.receptance.weight"].T)
    wkv = np.empty_like(k)
    for t in range(len(x)):
        # output: past (aa, bb at exponent pp) plus the current token with bonus u
        ww = first + k[t]
        top = np.maximum(pp, ww)
        e_past, e_now = np.exp(pp - top), np.exp(ww - top)
        wkv[t] = (e_past * aa + e_now * v[t]) / (e_past * bb + e_now)
        # state: decay the past by w, add the current token
        ww = pp + decay
        top = np.maximum(ww, k[t])
        e_past, e_now = np.exp(ww - top), np.exp(k[t] - top)
        aa = e_past * aa + e_now * v[t]
        bb = e_past * bb + e_now
        pp = top
    return (r * wkv) @ p["att.output.weight"].T, aa, bb, pp


def wkv_heads_v5_v6(r, k, v, decay, bonus, heads):
    """The linear-attention recurrence of v5 and v6, per head h (S is value-major, [i, j] =
    value i, key j):
        y_t = S_{t-1} r_t + v_t (sum_j u_j r_tj k_tj)       (the bonus u weights the current token)
        S_t = S_{t-1} diag(w_t) + v_t k_t^T                  (w decays each key channel)
    r, k, v, decay: (T, H, N); bonus: (H, N); heads: (H, N, N). Returns y (T, H, N), heads.
    """
    y = np.empty_like(v)
    for t in range(len(r)):
        kv = v[t][:, :, None] * k[t][:, None, :]  # (H, N value, N key)
        y[t] = np.einsum("hij,hj->hi", heads + kv * bonus[:, None, :], r[t])
        heads = heads * decay[t][:, None, :] + kv
    return y, heads


def time_mix_v5(p, x, prev, heads, n_head, ln_x_eps):
    """v5.1 (per-head decay and bonus, no gate) and v5.2 (per-channel decay and bonus, gate)."""
    t_len, c = x.shape
    n = c // n_head
    r = lerp_mix(x, prev, p["att.time_mix_r"]) @ p["att.receptance.weight"].T
    k = lerp_mix(x, prev, p["att.time_mix_k"]) @ p["att.key.weight"].T
    v = lerp_mix(x, prev, p["att.time_mix_v"]) @ p["att.value.weight"].T
    decay = np.broadcast_to(p["att.time_decay"].reshape(n_head, -1), (n_head, n))  # exp(-exp(w))
    if "att.time_faaaa" in p:  # v5.2: the raw bonus u
        bonus = np.broadcast_to(p["att.time_faaaa"].reshape(n_head, -1), (n_head, n))
    else:  # v5.1: stored as exp(u), the factor of the current token's k v^T, used as is
        bonus = np.broadcast_to(p["att.time_first"].reshape(n_head, -1), (n_head, n))
    shape = (t_len, n_head, n)
    y, heads = wkv_heads_v5_v6(
        r.reshape(shape), k.reshape(shape), v.reshape(shape),
        np.broadcast_to(decay, shape), bonus, heads,
    )
    y = group_norm(y.reshape(t_len, c), p["att.ln_x.weight"], p["att.ln_x.bias"], n_head, ln_x_eps)
    if "att.gate.weight" in p:
        y = y * silu(lerp_mix(x, prev, p["att.time_mix_g"]) @ p["att.gate.weight"].T)
    return y @ p["att.output.weight"].T, heads


def time_mix_v6(p, x, prev, heads, n_head, ln_x_eps=V6_V7_LN_X_EPS):
    """v6: data-dependent token shift (ddlerp) and data-dependent decay."""
    t_len, c = x.shape
    n = c // n_head
    dx = prev - x
    # ddlerp: a low-rank MLP of a first mix gives five extra mixes for w, k, v, r, g
    first = x + dx * p["att.time_maa_x"]
    w1, w2 = p["att.time_maa_w1"], p["att.time_maa_w2"]  # (5*D, C), (5, C, D)
    hidden = np.tanh(first @ w1.T).reshape(t_len, 5, -1)  # (T, 5, D)
    extra = np.einsum("tid,icd->tic", hidden, w2)  # (T, 5, C)
    mixed = {
        name: x + dx * (p[f"att.time_maa_{name}"] + extra[:, i])
        for i, name in enumerate("wkvrg")
    }
    r = mixed["r"] @ p["att.receptance.weight"].T
    k = mixed["k"] @ p["att.key.weight"].T
    v = mixed["v"] @ p["att.value.weight"].T
    g = silu(mixed["g"] @ p["att.gate.weight"].T)
    w = p["att.time_decay"].reshape(c) + (
        np.tanh(mixed["w"] @ p["att.time_decay_w1"].T) @ p["att.time_decay_w2"].T
    )
    decay = np.exp(-np.exp(w))
    bonus = p["att.time_faaaa"].reshape(n_head, n)
    shape = (t_len, n_head, n)
    y, heads = wkv_heads_v5_v6(
        r.reshape(shape), k.reshape(shape), v.reshape(shape), decay.reshape(shape), bonus, heads
    )
    y = group_norm(y.reshape(t_len, c), p["att.ln_x.weight"], p["att.ln_x.bias"], n_head, ln_x_eps)
    return (y * g) @ p["att.output.weight"].T, heads


def normalize_heads(x, n_head):
    """L2-normalize each head's slice (T, C) (torch's F.normalize, eps 1e-12)."""
    t_len, c = x.shape
    heads = x.reshape(t_len, n_head, c // n_head)
    norm = np.sqrt((heads**2).sum(axis=-1, keepdims=True))
    return (heads / np.maximum(norm, 1e-12)).reshape(t_len, c)


def time_mix_v7(p, x, prev, heads, v_first, n_head, layer, ln_x_eps=V6_V7_LN_X_EPS):
    """v7 "Goose": a generalized delta rule with in-context learning rate a.

    Per head, S (value-major, [i, j] = value i, key j):
        S_t = S_{t-1} (diag(w_t) - kk_t^T (a_t * kk_t)) + v_t k_t^T
        y_t = S_t r_t
    kk is the normalized key that S forgets along, by rate a.
    v_first (T, C) is layer 0's value; later layers mix it into their own value.
    """
    t_len, c = x.shape
    n = c // n_head
    dx = prev - x
    mix = p["att.x_rwkvag"].reshape(6, c)
    xr, xw, xk, xv, xa, xg = (x + dx * mix[i] for i in range(6))

    r = xr @ p["att.receptance.weight"].T
    k = xk @ p["att.key.weight"].T
    v = xv @ p["att.value.weight"].T
    w = p["att.w0"].reshape(c) + np.tanh(xw @ p["att.w1"].T) @ p["att.w2"].T
    decay = np.exp(-V7_DECAY_SCALE * sigmoid(w))
    a = sigmoid(p["att.a0"].reshape(c) + (xa @ p["att.a1"].T) @ p["att.a2"].T)
    g = sigmoid(xg @ p["att.g1"].T) @ p["att.g2"].T

    kk = normalize_heads(k * p["att.k_k"].reshape(c), n_head)
    k = k * (1.0 + (a - 1.0) * p["att.k_a"].reshape(c))
    if layer == 0:
        v_first = v
    else:
        v_gate = sigmoid(p["att.v0"].reshape(c) + (xv @ p["att.v1"].T) @ p["att.v2"].T)
        v = v + (v_first - v) * v_gate

    shape = (t_len, n_head, n)
    r3, k3, v3 = r.reshape(shape), k.reshape(shape), v.reshape(shape)
    w3, kk3, a3 = decay.reshape(shape), kk.reshape(shape), a.reshape(shape)
    y = np.empty(shape)
    for t in range(t_len):
        forget = np.einsum("hij,hj->hi", heads, kk3[t])  # S kk
        heads = (
            heads * w3[t][:, None, :]
            - forget[:, :, None] * (kk3[t] * a3[t])[:, None, :]
            + v3[t][:, :, None] * k3[t][:, None, :]
        )
        y[t] = np.einsum("hij,hj->hi", heads, r3[t])

    y = group_norm(y.reshape(t_len, c), p["att.ln_x.weight"], p["att.ln_x.bias"], n_head, ln_x_eps)
    # bonus: each head's current value, weighted by sum_j r_j k_j r_k_j
    bonus = (r3 * k3 * p["att.r_k"].reshape(n_head, n)).sum(axis=-1, keepdims=True) * v3
    y = y + bonus.reshape(t_len, c)
    return (y * g) @ p["att.output.weight"].T, heads, v_first


# ----------------------------------------------------------------------------------------------


def _squeeze_vector(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1) if sum(d > 1 for d in a.shape) <= 1 else a


class LayerParams:
    """blocks.{i}.* tensors of one layer, addressed by the rest of the key, as float64."""

    def __init__(self, tensors: dict[str, np.ndarray], layer: int):
        prefix = f"blocks.{layer}."
        # Vectors stored as (1, 1, C) (v7's mixes, w0, ...) or (H, 1, 1) become 1-D.
        self._t = {
            key[len(prefix):]: _squeeze_vector(np.asarray(value, dtype=np.float64))
            for key, value in tensors.items()
            if key.startswith(prefix)
        }

    def __getitem__(self, key: str) -> np.ndarray:
        return self._t[key]

    def __contains__(self, key: str) -> bool:
        return key in self._t


class Reference:
    """Forward pass of an RWKV model given its tensors as read_model returns them."""

    def __init__(
        self,
        tensors: dict[str, np.ndarray],
        n_layer: int,
        n_embed: int,
        n_vocab: int,
        arch: str | None = None,
        v5_ln_x_eps: float = 64e-5,
        ln_eps: float = LN_EPS,
        ln_x_eps: float = V6_V7_LN_X_EPS,
        rescale_every: int = 0,
    ):
        """ln_eps, ln_x_eps (v6, v7) and rescale_every (llama.cpp's rwkv6 files: the residual
        stream is halved after every rescale_every-th block) come from GGUF metadata."""
        self.arch = arch or detect_arch(tensors)
        self.n_layer, self.n_embed, self.n_vocab = n_layer, n_embed, n_vocab
        self.v5_ln_x_eps = v5_ln_x_eps
        self.ln_eps, self.ln_x_eps, self.rescale_every = ln_eps, ln_x_eps, rescale_every
        f64 = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
        self.emb = f64["emb.weight"]
        self.ln0 = (f64["blocks.0.ln0.weight"], f64["blocks.0.ln0.bias"])
        self.ln_out = (f64["ln_out.weight"], f64["ln_out.bias"])
        self.head = f64["head.weight"]
        self.layers = [LayerParams(f64, i) for i in range(n_layer)]
        if self.arch == "4":
            self.n_head, self.head_size = 0, 0
        elif self.arch == "7":
            self.n_head, self.head_size = f64["blocks.0.att.r_k"].shape
        else:  # v5/v6: time_decay is (n_head, 1 or head_size, 1)
            self.n_head = f64["blocks.0.att.time_decay"].shape[0]
            if self.arch == "6":
                self.n_head = f64["blocks.0.att.time_faaaa"].shape[0]
            self.head_size = n_embed // self.n_head
        self.layer_state_len = n_embed * (5 if self.arch == "4" else 2 + self.head_size)
        self.state_len = n_layer * self.layer_state_len

    @classmethod
    def from_file(cls, path: str | Path, **kw) -> Reference:
        header, tensors = read_model(path)
        return cls(tensors, header.n_layer, header.n_embed, header.n_vocab, **kw)

    # --- state in rwkv.cpp's layout -----------------------------------------------------------

    def init_state(self) -> np.ndarray:
        state = np.zeros(self.state_len, dtype=np.float32)
        if self.arch == "4":
            per_layer = state.reshape(self.n_layer, 5, self.n_embed)
            per_layer[:, 4] = V4_FRESH_PP
        return state

    def _unpack(self, state: np.ndarray, layer: int) -> dict[str, np.ndarray]:
        c = self.n_embed
        s = np.asarray(state, dtype=np.float64).reshape(self.n_layer, -1)[layer]
        if self.arch == "4":
            ffn_xx, att_xx, aa, bb, pp = s.reshape(5, c)
            return {"ffn_xx": ffn_xx, "att_xx": att_xx, "aa": aa, "bb": bb, "pp": pp}
        n = self.head_size
        heads = s[2 * c:].reshape(self.n_head, n, n)
        if self.arch != "7":  # v5/v6 store [h, key, value]
            heads = heads.transpose(0, 2, 1)
        return {"ffn_xx": s[:c], "att_xx": s[c:2 * c], "heads": heads}  # heads: [h, value, key]

    def _pack(self, layers: list[dict[str, np.ndarray]]) -> np.ndarray:
        parts = []
        for ls in layers:
            if self.arch == "4":
                parts += [ls["ffn_xx"], ls["att_xx"], ls["aa"], ls["bb"], ls["pp"]]
            else:
                heads = ls["heads"] if self.arch == "7" else ls["heads"].transpose(0, 2, 1)
                parts += [ls["ffn_xx"], ls["att_xx"], heads.reshape(-1)]
        return np.concatenate(parts).astype(np.float32)

    # --- forward ------------------------------------------------------------------------------

    def forward(self, token: int, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits after one token, and the new state (the input state is not modified)."""
        return self.forward_sequence([token], state)

    def forward_sequence(self, tokens, state: np.ndarray | None = None):
        """Logits after the last token of the sequence, and the new state.

        The whole sequence goes through one layer before the next (as an engine's sequence
        mode does), so comparing it with token-by-token calls checks the state hand-over.
        """
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("forward_sequence needs at least one token")
        if state is None:
            state = self.init_state()
        if len(state) != self.state_len:
            raise ValueError(f"state has {len(state)} values, expected {self.state_len}")
        eps = self.ln_eps
        x = layer_norm(self.emb[tokens], *self.ln0, eps)
        v_first = None
        new_layers = []
        for i, p in enumerate(self.layers):
            ls = self._unpack(state, i)
            xa = layer_norm(x, p["ln1.weight"], p["ln1.bias"], eps)
            prev = token_shift(xa, ls["att_xx"])
            new = {"att_xx": xa[-1]}
            if self.arch == "4":
                out, new["aa"], new["bb"], new["pp"] = time_mix_v4(
                    p, xa, prev, ls["aa"], ls["bb"], ls["pp"]
                )
            elif self.arch in ("5.1", "5.2"):
                out, new["heads"] = time_mix_v5(
                    p, xa, prev, ls["heads"], self.n_head, self.v5_ln_x_eps
                )
            elif self.arch == "6":
                out, new["heads"] = time_mix_v6(p, xa, prev, ls["heads"], self.n_head, self.ln_x_eps)
            else:
                out, new["heads"], v_first = time_mix_v7(
                    p, xa, prev, ls["heads"], v_first, self.n_head, i, self.ln_x_eps
                )
            x = x + out

            xf = layer_norm(x, p["ln2.weight"], p["ln2.bias"], eps)
            prev = token_shift(xf, ls["ffn_xx"])
            new["ffn_xx"] = xf[-1]
            if self.arch in ("4", "5.1", "5.2"):
                x = x + channel_mix_v4(p, xf, prev)
            elif self.arch == "6":
                x = x + channel_mix_v6(p, xf, prev)
            else:
                x = x + channel_mix_v7(p, xf, prev)
            if self.rescale_every and (i + 1) % self.rescale_every == 0:
                x = x / 2.0
            new_layers.append(new)

        logits = layer_norm(x[-1], *self.ln_out, eps) @ self.head.T
        return logits.astype(np.float32), self._pack(new_layers)
