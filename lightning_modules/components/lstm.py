"""An nn.LSTM whose CPU path streams a large recurrent weight once per time step.

At the paper's size (hidden 4096, §3.3) the recurrent weight W_hh is 4·4096 × 4096 floats (268 MB), far
larger than the CPU's caches, and every time step must read all of it for a handful of segments. torch's CPU
kernels run that product in a layout that reads it at about 9 GB/s on a 2-core machine and accumulate the
weight's gradient step by step; here each step's forward product is W_hh · h_tᵀ as a batch of small
products (W_hh read once, not repacked; none at all from the zero state), the input's product for all steps
is one matrix product, and the weights' gradients are one product each after
the backward pass through time. Same parameters, same equations as nn.LSTM (gates i, f, g, o).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

STREAMING_MIN_HIDDEN = 1024  # below it W_hh fits the caches and torch's fused CPU kernel is faster
# MKL runs a batch of small products without first copying W_hh into panels, as one large product does:
# W_hh h_tᵀ at 4096 took 12 ms instead of 17 ms on 2 cores (blocks of 8 to 32 rows alike)
RECURRENT_ROWS = 16


class _LSTMLayer(torch.autograd.Function):
    """One unidirectional LSTM layer over `[B, T, I]` from `(h0, c0)` `[B, H]`."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
        h0: torch.Tensor,
        c0: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        batch, steps, _ = x.shape
        hidden = w_hh.shape[1]
        x_steps = x.transpose(0, 1).reshape(steps * batch, -1)  # time-major rows
        input_part = torch.addmm(b_ih + b_hh, x_steps, w_ih.t()).view(steps, batch, 4 * hidden)
        gates = x.new_empty(steps, batch, 4 * hidden)  # after their nonlinearities: i, f, g, o
        h = x.new_empty(steps + 1, batch, hidden)
        c = x.new_empty(steps + 1, batch, hidden)
        tanh_c = x.new_empty(steps, batch, hidden)  # tanh(c_t+1), kept for the backward pass
        h[0], c[0] = h0, c0
        rows = math.gcd(RECURRENT_ROWS, 4 * hidden)
        blocks = 4 * hidden // rows
        w_hh_blocks = w_hh.view(blocks, rows, hidden)
        for t in range(steps):
            if t == 0 and not h0.any():  # nn.LSTM's default zero state: W_hh · 0 needs no pass over W_hh
                pre = input_part[0]
            else:  # W_hh h_tᵀ (one pass over W_hh) as a batch of products of RECURRENT_ROWS rows each
                h_t = h[t].t().contiguous().expand(blocks, hidden, batch)
                pre = torch.baddbmm(input_part[t].t().reshape(blocks, rows, batch), w_hh_blocks, h_t)
                pre = pre.view(4 * hidden, batch).t()
            i, f, g, o = gates[t].chunk(4, dim=1)
            torch.sigmoid(pre[:, :hidden], out=i)
            torch.sigmoid(pre[:, hidden : 2 * hidden], out=f)
            torch.tanh(pre[:, 2 * hidden : 3 * hidden], out=g)
            torch.sigmoid(pre[:, 3 * hidden :], out=o)
            torch.addcmul(i * g, f, c[t], out=c[t + 1])
            torch.tanh(c[t + 1], out=tanh_c[t])
            torch.mul(o, tanh_c[t], out=h[t + 1])
        ctx.save_for_backward(x_steps, w_ih, w_hh, gates, h, c, tanh_c)
        return h[1:].transpose(0, 1).contiguous(), h[steps].clone(), c[steps].clone()

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, d_output: torch.Tensor | None, d_h_last: torch.Tensor | None, d_c_last: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        x_steps, w_ih, w_hh, gates, h, c, tanh_c = ctx.saved_tensors
        steps, batch, hidden = h.shape[0] - 1, h.shape[1], h.shape[2]
        d_h = torch.zeros_like(h[0]) if d_h_last is None else d_h_last.clone()
        d_c = torch.zeros_like(c[0]) if d_c_last is None else d_c_last.clone()
        d_pre = torch.empty_like(gates)
        for t in reversed(range(steps)):
            if d_output is not None:
                d_h = d_h + d_output[:, t]
            i, f, g, o = gates[t].chunk(4, dim=1)
            d_c = d_c + d_h * o * (1 - tanh_c[t] * tanh_c[t])
            d_i, d_f, d_g, d_o = d_pre[t].chunk(4, dim=1)
            torch.mul(d_c * g, i * (1 - i), out=d_i)
            torch.mul(d_c * c[t], f * (1 - f), out=d_f)
            torch.mul(d_c * i, 1 - g * g, out=d_g)
            torch.mul(d_h * tanh_c[t], o * (1 - o), out=d_o)
            d_c = d_c * f
            if t > 0 or ctx.needs_input_grad[5]:  # at t = 0, h0's gradient: skipped when nothing asks for it
                d_h = d_pre[t] @ w_hh
        d_pre_rows = d_pre.view(steps * batch, 4 * hidden)
        d_x = None
        if ctx.needs_input_grad[0]:
            d_x = (d_pre_rows @ w_ih).view(steps, batch, -1).transpose(0, 1)
        d_w_ih = d_pre_rows.t() @ x_steps if ctx.needs_input_grad[1] else None
        d_w_hh = d_pre_rows.t() @ h[:steps].reshape(steps * batch, hidden) if ctx.needs_input_grad[2] else None
        d_b = d_pre_rows.sum(0)
        return d_x, d_w_ih, d_w_hh, d_b, d_b, d_h if ctx.needs_input_grad[5] else None, d_c


class StreamingLSTM(nn.LSTM):
    """nn.LSTM (same arguments, parameters and results) that on CPU, for a hidden size of at least
    ``STREAMING_MIN_HIDDEN``, runs each layer with ``_LSTMLayer`` (2x faster training at the paper's 4096 on
    2 cores; README "Frozen work done once"). Other devices, smaller sizes, packed sequences, projections and bidirectional
    LSTMs run torch's own kernels."""

    def forward(self, input: Any, hx: tuple[torch.Tensor, torch.Tensor] | None = None) -> Any:  # noqa: A002
        if not self.streams(input):
            return super().forward(input, hx)
        sequence = input if self.batch_first else input.transpose(0, 1)
        shape = (self.num_layers, sequence.shape[0], self.hidden_size)
        h0, c0 = hx if hx is not None else (sequence.new_zeros(shape), sequence.new_zeros(shape))
        last_h, last_c = [], []
        for layer in range(self.num_layers):
            if layer > 0:
                sequence = nn.functional.dropout(sequence, self.dropout, self.training)
            weights = [getattr(self, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            sequence, h_n, c_n = _LSTMLayer.apply(sequence, *weights, h0[layer], c0[layer])
            last_h.append(h_n)
            last_c.append(c_n)
        output = sequence if self.batch_first else sequence.transpose(0, 1)
        return output, (torch.stack(last_h), torch.stack(last_c))

    def streams(self, input: Any) -> bool:
        """Whether this call runs ``_LSTMLayer`` rather than torch's kernels."""
        return (
            isinstance(input, torch.Tensor)
            and input.device.type == "cpu"
            and input.dim() == 3
            and self.bias
            and not self.bidirectional
            and self.proj_size == 0
            and self.hidden_size >= STREAMING_MIN_HIDDEN
        )
