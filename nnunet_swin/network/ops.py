"""The custom autograd functions and functional pieces Swin blocks are built from: LayerNorm/GELU + Linear
recomputed in backward, token gathers whose backward is a gather, the scaled residual, window attention."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def _autocast_dtype(device: str) -> torch.dtype | None:
    """The dtype autocast computes in on this device type, or None when it is off (or, like on the meta
    device, does not exist)."""
    if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def _forward_autocast(ctx) -> AbstractContextManager:
    """The autocast state a custom function's forward ran under (``ctx.autocast``), for its backward."""
    device, dtype = ctx.autocast
    return torch.autocast(device, dtype=dtype) if dtype is not None else nullcontext()


def cast_together(params: Sequence[torch.Tensor | None], device: str) -> list[torch.Tensor] | None:
    """Under autocast in eager mode, ``params`` cast to autocast's dtype in one copy, returned as views shaped
    like them (autocast would cast each weight, and each gradient back, in a kernel of its own); None when
    there is nothing to cast (no autocast, compiling, a missing bias, already low precision)."""
    dtype = None if _is_compiling() else _autocast_dtype(device)
    if dtype is None or any(p is None or p.dtype == dtype for p in params):
        return None
    flat = torch.cat([p.reshape(-1) for p in params]).to(dtype)
    return [t.view_as(p) for t, p in zip(flat.split([p.numel() for p in params]), params)]


class _RecomputedLinear(torch.autograd.Function):
    """``linear(fn(x))`` that keeps ``x`` for backward instead of ``fn(x)`` and recomputes the cheap,
    memory-bound ``fn`` (LayerNorm, GELU) there; the matmuls are never recomputed."""

    @staticmethod
    def forward(ctx, x, weight, bias, fn, *fn_params):
        out = F.linear(fn(x, *fn_params), weight, bias)
        ctx.fn, ctx.out_dtype, ctx.has_bias = fn, out.dtype, bias is not None
        device = x.device.type  # backward runs outside autocast: recompute fn under the forward's autocast state
        ctx.autocast = (device, _autocast_dtype(device))
        ctx.save_for_backward(x, weight, bias, *fn_params)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, *params = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the plain formula so double backward is right
            return _RecomputedLinear._differentiable_backward(ctx, grad_out, x, weight, bias, params)
        with torch.enable_grad(), _forward_autocast(ctx):
            leaves = [x.detach().requires_grad_(), *(p.detach().requires_grad_() for p in params)]
            y = ctx.fn(*leaves)
        dt = ctx.out_dtype  # the dtype autocast ran the linear in
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(dt)
        grad_w = (g.t() @ y.detach().reshape(-1, y.shape[-1]).to(dt)).to(weight.dtype)
        grad_b = g.sum(0).to(weight.dtype) if ctx.has_bias else None
        grad_y = (g @ weight.to(dt)).view(y.shape).to(y.dtype)
        grads = torch.autograd.grad(y, leaves, grad_y)
        return grads[0], grad_w, grad_b, None, *grads[1:]

    @staticmethod
    def _differentiable_backward(ctx, grad_out, x, weight, bias, params):
        """Backward as a graph of the saved inputs (``create_graph=True``): ``linear(fn(x))`` is recomputed
        with autograd recording, so gradients of these gradients (double backward) are exact."""
        with _forward_autocast(ctx):
            out = F.linear(ctx.fn(x, *params), weight, bias)
        inputs = [x, weight, bias, *params]
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
        result = [next(grads) if t is not None and t.requires_grad else None for t in inputs]
        return result[0], result[1], result[2], None, *result[3:]


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, weight.shape, weight, bias)  # eps 1e-5, as nn.LayerNorm and the official code


def norm_linear(x: torch.Tensor, norm: nn.LayerNorm | None, linear: nn.Linear | nn.Conv2d,
                weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(norm(x))`` on channels-last tokens keeping only ``x`` for backward (a 1x1 convolution
    counts as a linear layer). ``weight``/``bias`` replace the linear's own (its low-precision copies)."""
    if weight is None:
        weight, bias = linear.weight.flatten(1), linear.bias
    if norm is None:
        return F.linear(x, weight, bias)
    if not torch.is_grad_enabled() or _is_compiling():  # nothing to save / inductor plans recompute itself
        return F.linear(norm(x), weight, bias)
    return _RecomputedLinear.apply(x, weight, bias, _layer_norm, norm.weight, norm.bias)


def gelu_linear(x: torch.Tensor, linear: nn.Linear, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(gelu(x))`` keeping only ``x`` for backward."""
    if weight is None:
        weight, bias = linear.weight, linear.bias
    if not torch.is_grad_enabled() or _is_compiling():
        return F.linear(F.gelu(x), weight, bias)
    return _RecomputedLinear.apply(x, weight, bias, F.gelu)


class _TokenGather(torch.autograd.Function):
    """``x.index_select(1, index)`` whose backward is another gather, ``grad.index_select(1, grad_index)``
    (after appending a zero token when ``pad_grad``), instead of autograd's zero-fill plus scatter-add.

    Exact for the window gathers: they move every real token exactly once, and the extra reads of padding
    positions get a zero gradient (padding keys are masked out of real queries, padding outputs cropped)."""

    @staticmethod
    def forward(ctx, x, index, grad_index, pad_grad):
        ctx.grad_index, ctx.pad_grad = grad_index, pad_grad
        return x.index_select(1, index)

    @staticmethod
    def backward(ctx, grad):
        if ctx.pad_grad:
            grad = F.pad(grad, (0, 0, 0, 1))
        return grad.index_select(1, ctx.grad_index), None, None, None


class _ScaledResidual(torch.autograd.Function):
    """``x + branch * scale`` (drop path: ``scale`` is 0 or 1/keep per image) as one kernel each way."""

    @staticmethod
    def forward(ctx, x, branch, scale):
        ctx.save_for_backward(scale)
        return torch.addcmul(x, branch, scale)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad, grad * scale, None


def _split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-major qkv (B, nW, N, 3C) -> q, k, v (B, nW, heads, N, d), in one copy."""
    b, nw, n, c3 = qkv.shape
    return qkv.view(b, nw, n, 3, heads, c3 // (3 * heads)).permute(3, 0, 1, 4, 2, 5).contiguous().unbind(0)


def _merge_heads(out: torch.Tensor) -> torch.Tensor:
    """(B, nW, heads, N, d) -> token-major (B, nW, N, C), the layout the output projection takes."""
    b, nw, heads, n, d = out.shape
    return out.transpose(2, 3).reshape(b, nw, n, heads * d)


def _probabilities(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None,
                   scale: float) -> torch.Tensor:
    """softmax(scale * q k^T + bias + mask), summed in the official order. q k^T runs in the input dtype
    except float16 (whose logits can overflow; computed in float32 then); adding the bias promotes to at
    least float32, so the softmax runs in float32 (float64 for float64 inputs)."""
    if q.dtype == torch.float16:
        with torch.autocast(q.device.type, enabled=False):
            logits = q.float() @ k.float().transpose(-2, -1)
    else:
        logits = q @ k.transpose(-2, -1)
    logits = torch.add(bias.to(torch.float64 if logits.dtype == torch.float64 else torch.float32), logits,
                       alpha=scale)
    if mask is not None:
        logits = logits.add_(mask[:, None])
    return logits.softmax(-1)


class _WindowAttention(torch.autograd.Function):
    """The explicit formula with a backward written for fewer kernels than autograd's: the scale folded into
    the q and k gradient matmuls, the bias gradient summed over images and windows in one reduction, and the
    q, k, v gradients stacked straight into the token-major qkv layout. It keeps the token-major qkv (the
    size of the head-major copy autograd would keep) and the probabilities."""

    @staticmethod
    def forward(ctx, qkv, bias, mask, heads, scale):
        q, k, v = _split_heads(qkv, heads)
        attn = _probabilities(q, k, bias, mask, scale)
        attn_v = attn.to(v.dtype)
        ctx.heads, ctx.scale = heads, scale
        ctx.save_for_backward(qkv, bias, mask, attn, attn_v)
        return _merge_heads(attn_v @ v)

    @staticmethod
    def backward(ctx, grad):
        qkv, bias, mask, attn, attn_v = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the plain formula so double backward is exact
            inputs = [t for t in (qkv, bias) if t.requires_grad]
            out = _plain_window_attention(qkv, ctx.heads, bias, mask, ctx.scale)
            grads = iter(torch.autograd.grad(out, inputs, grad, create_graph=True))
            return (next(grads) if qkv.requires_grad else None, next(grads) if bias.requires_grad else None,
                    None, None, None)
        q, k, v = _split_heads(qkv, ctx.heads)
        b, nw, heads, n, d = q.shape
        grad = grad.view(b, nw, n, heads, d).transpose(2, 3).contiguous()
        grad_v = attn_v.transpose(-2, -1) @ grad
        grad_logits = torch._softmax_backward_data((grad @ v.transpose(-2, -1)).to(attn.dtype), attn, -1, attn.dtype)
        grad_bias = grad_logits.sum((0, 1)).to(bias.dtype) if ctx.needs_input_grad[1] else None
        g = grad_logits.to(q.dtype).view(-1, n, n)
        ignored = g.new_empty(())  # beta=0: baddbmm only scales the product
        grad_q = torch.baddbmm(ignored, g, k.reshape(-1, n, d), beta=0, alpha=ctx.scale)
        grad_k = torch.baddbmm(ignored, g.transpose(1, 2), q.reshape(-1, n, d), beta=0, alpha=ctx.scale)
        grads = [t.view(b, nw, heads, n, d).transpose(2, 3) for t in (grad_q, grad_k, grad_v)]
        return torch.stack(grads, 3).view(qkv.shape), grad_bias, None, None, None


def _plain_window_attention(qkv: torch.Tensor, heads: int, bias: torch.Tensor, mask: torch.Tensor | None,
                            scale: float) -> torch.Tensor:
    q, k, v = _split_heads(qkv, heads)
    return _merge_heads(_probabilities(q, k, bias, mask, scale).to(v.dtype) @ v)


def window_attention(qkv: torch.Tensor, heads: int, bias: torch.Tensor, mask: torch.Tensor | None, scale: float,
                     sdpa: bool) -> torch.Tensor:
    """softmax(scale * q k^T + bias + mask) v per window and head. qkv: token-major (B, nW, N, 3C) as the qkv
    projection makes it; bias: (heads, N, N); mask: (nW, N, N) or None, broadcast over the batch (never
    copied per image). Returns token-major (B, nW, N, C).

    ``sdpa`` uses torch's scaled_dot_product_attention; otherwise the explicit formula (``_probabilities``),
    in training with a hand-written backward. On the CPU a learnable bias sends SDPA to its unfused path,
    which takes more kernels than the explicit formula.
    """
    if sdpa:
        q, k, v = _split_heads(qkv, heads)
        b, nw, _, n, d = q.shape
        if mask is None:  # windows folded into the batch: the (heads, N, N) bias broadcasts over both
            q, k, v = (t.view(b * nw, heads, n, d) for t in (q, k, v))
            additive = bias
        else:  # windows folded into the head axis: the (nW*heads, N, N) bias broadcasts over the batch
            q, k, v = (t.view(b, nw * heads, n, d) for t in (q, k, v))
            additive = (bias + mask[:, None]).reshape(nw * heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive.to(q.dtype), scale=scale)
        return _merge_heads(out.view(b, nw, heads, n, d))
    if torch.is_grad_enabled() and qkv.requires_grad and qkv.dtype in (torch.float32, torch.bfloat16) \
            and bias.dtype == torch.float32 and not _is_compiling():
        return _WindowAttention.apply(qkv, bias, mask, heads, scale)
    return _plain_window_attention(qkv, heads, bias, mask, scale)
