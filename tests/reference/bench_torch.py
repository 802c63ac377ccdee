#!/usr/bin/env python3
"""The PyTorch side of DESIGN.md's performance targets (T1-T5, T7, T8), on the GPU host.

Every model is built from its config with random weights (nothing is downloaded), and every workload
is the plain PyTorch/transformers way of doing it, so that `prefer bench` can be read beside it:
bf16 autocast over fp32 master weights, SDPA attention and fused AdamW for training, pure bf16 for
generation and the kernel baselines.

    python3 tests/reference/bench_torch.py                      # T1, T2, T7, T8
    python3 tests/reference/bench_torch.py --targets T1,T2,T7,T8,T3,T4,T5 --out bench_torch.json
    python3 tests/reference/bench_torch.py --compile            # also torch.compile T1 and T3
    python3 tests/reference/bench_torch.py --smoke              # tiny shapes, CPU float32

T2 always tries torch.compile as well as eager (DESIGN.md's T2 row has both); --compile adds compiled
rows for T1 and T3. A target that runs out of memory or needs a missing feature is skipped, saying
why; the rest still run. --smoke shrinks every workload and runs it on the CPU in float32: it checks
that the script works, its numbers mean nothing.
"""
import argparse
import contextlib
import datetime
import gc
import json
import platform
import statistics
import sys
import time
import traceback

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("bench_torch.py needs PyTorch (and transformers); run it on the GPU host with python3.")

PEAK_BF16_FLOPS = 989e12  # H100 SXM dense bf16, the denominator of DESIGN.md's MFU

# The presets of src/model/config.rs. "tiny" is prefer's tiny preset, used by --smoke only.
PRESETS = {
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                     num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     tie_word_embeddings=True, max_position_embeddings=131072,
                     rope_theta=500000.0,
                     rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                       high_freq_factor=4.0, original_max_position_embeddings=8192)),
    "llama-134m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                       num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                       tie_word_embeddings=False, max_position_embeddings=2048,
                       rope_theta=10000.0, rope_scaling=None),
    "tiny": dict(vocab_size=259, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 tie_word_embeddings=True, max_position_embeddings=2048,
                 rope_theta=10000.0, rope_scaling=None),
}

# DESIGN.md's "PyTorch today" column (torch 2.11, transformers 5.17, H100, 2026-11-27), printed
# beside this run's numbers so that a host that disagrees with it stands out.
DESIGN_PYTORCH = {
    ("T1", "tokens_per_s"): 40.7e3, ("T1", "mfu_pct"): 32.0, ("T1", "peak_mem_gib"): 43.8,
    ("T2", "tokens_per_s"): 199e3, ("T2", "compile_tokens_per_s"): 391e3,
    ("T2", "compile_mfu_pct"): 36.0,
    ("T3", "tokens_per_s"): 40.0e3, ("T3", "peak_mem_gib"): 47.7,
    ("T4", "gen_tokens_per_s"): 3.4e3,
    ("T5", "gen_tokens_per_s"): 51.0,
    ("T7", "fwd_bwd_ms"): 33.8, ("T7", "extra_mem_gib"): 11.7,
    ("T8", "fwd_ms"): 0.133, ("T8", "fwd_tflops"): 258.0, ("T8", "fwd_bwd_ms"): 0.654,
}

DEFAULT_TARGETS = "T1,T2,T7,T8"


class Unsupported(Exception):
    """A workload this torch build or GPU cannot run; it is skipped with a one-line reason."""


class Ctx:
    """What every target needs: the device, the precision and the timing settings."""

    def __init__(self, args):
        self.smoke = args.smoke
        self.cuda = not args.smoke
        self.device = torch.device("cuda" if self.cuda else "cpu")
        # --smoke is float32 throughout; the real run is bf16 (autocast for training).
        self.low = torch.bfloat16 if self.cuda else torch.float32
        self.warmup, self.iters = args.warmup, args.iters
        self.gen_warmup, self.gen_iters = min(args.warmup, 1), args.gen_iters
        self.compile = args.compile
        self.compile_t2 = not args.no_compile and (self.cuda or args.compile)
        self.rows, self.skipped = [], []

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    def add(self, tid, workload, metric, value, unit, **extra):
        if value is None:  # e.g. GPU memory in a --smoke run
            return
        # The DESIGN.md figure is for the full shapes; a smoke run's shapes are not comparable.
        design = None if self.smoke else DESIGN_PYTORCH.get((tid, metric))
        row = dict(id=tid, key=f"{tid}.{metric}", workload=workload, metric=metric, value=value,
                   unit=unit, design_pytorch=design)
        row.update(extra)
        self.rows.append(row)

    def skip(self, tid, what, reason):
        print(f"  skip {tid} ({what}): {reason}", flush=True)
        self.skipped.append(dict(id=tid, workload=what, reason=reason))


# ---------------------------------------------------------------------------------------------
# Helpers: timing, memory, models
# ---------------------------------------------------------------------------------------------

def sync(ctx):
    if ctx.cuda:
        torch.cuda.synchronize()


def time_ms(ctx, fn, warmup=None, iters=None):
    """Runs fn `warmup` times, then times `iters` calls; returns each call's milliseconds.

    On CUDA each call sits between two events, so the time is the GPU's, including any gap where
    the GPU waits for the CPU to launch work (launch-bound code is charged for it, as it should be).
    """
    warmup = ctx.warmup if warmup is None else warmup
    iters = ctx.iters if iters is None else iters
    for _ in range(warmup):
        fn()
    sync(ctx)
    if not ctx.cuda:
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    events = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


def median(times):
    # The median, not the mean: one slow call (a page fault, a clock change) should not move it.
    return statistics.median(times)


def reset_peak(ctx):
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()


def peak_gib(ctx):
    return torch.cuda.max_memory_allocated() / 2**30 if ctx.cuda else None


def allocated_gib(ctx):
    return torch.cuda.memory_allocated() / 2**30 if ctx.cuda else None


def free_memory(ctx):
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


def llama_config(preset):
    import transformers
    from transformers import LlamaConfig

    p = dict(PRESETS[preset])
    theta, scaling = p.pop("rope_theta"), p.pop("rope_scaling")
    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5 keeps θ and the scaling together in `rope_parameters`.
        rope = dict(scaling or dict(rope_type="default"), rope_theta=theta)
        p["rope_parameters"] = rope
    else:
        p["rope_theta"], p["rope_scaling"] = theta, scaling
    return LlamaConfig(**p, head_dim=p["hidden_size"] // p["num_attention_heads"],
                       rms_norm_eps=1e-5, attn_implementation="sdpa")


def build_llama(ctx, preset, dtype=torch.float32):
    """A LlamaForCausalLM with random weights, initialised directly on the device."""
    from transformers import LlamaForCausalLM

    cfg = llama_config(preset)
    with ctx.device:
        model = LlamaForCausalLM(cfg)
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    return model.to(dtype)


def n_params(model):
    # model.parameters() yields a tied embedding once, so N counts it once.
    return sum(p.numel() for p in model.parameters())


def mfu_pct(tokens_per_s, n, layers, hidden, seq):
    """DESIGN.md: MFU = tokens/s × (6·N + 12·L·d·T) / 989e12."""
    return 100.0 * tokens_per_s * (6 * n + 12 * layers * hidden * seq) / PEAK_BF16_FLOPS


def random_ids(ctx, vocab, *shape):
    return torch.randint(0, vocab, shape, device=ctx.device)


def adamw(ctx, model, lr):
    # fused=True is the single-kernel CUDA AdamW the baseline used; the CPU smoke run uses the default.
    return torch.optim.AdamW(model.parameters(), lr=lr, fused=True if ctx.cuda else None)


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------

def train_step(ctx, tid, preset, batch, seq, compiled, prefix=""):
    """Causal-LM training step: forward with labels (HF's loss), backward, fused AdamW."""
    model = build_llama(ctx, preset)  # fp32 master weights; autocast runs the matmuls in bf16
    model.train()
    opt = adamw(ctx, model, lr=1e-5)
    if compiled:
        torch._dynamo.reset()  # drop graphs compiled for an earlier model
    fwd = torch.compile(model) if compiled else model
    ids = random_ids(ctx, model.config.vocab_size, batch, seq)

    def step():
        with ctx.autocast():
            loss = fwd(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = time_ms(ctx, step)
    tok_s = batch * seq / (median(times) / 1e3)
    n = n_params(model)
    mode = "torch.compile" if compiled else "eager"
    what = f"train step {preset} {batch}x{seq} ({mode})"
    cfg = model.config
    ctx.add(tid, what, prefix + "tokens_per_s", tok_s, "tok/s", samples_ms=times, n_params=n)
    ctx.add(tid, what, prefix + "mfu_pct",
            mfu_pct(tok_s, n, cfg.num_hidden_layers, cfg.hidden_size, seq), "%")
    ctx.add(tid, what, prefix + "peak_mem_gib", peak_gib(ctx), "GiB")


def t1(ctx):
    batch, seq = (2, 32) if ctx.smoke else (8, 1024)
    preset = "tiny" if ctx.smoke else "llama-1b"
    yield "eager", lambda: train_step(ctx, "T1", preset, batch, seq, compiled=False)
    if ctx.compile:
        yield "torch.compile", lambda: train_step(ctx, "T1", preset, batch, seq, compiled=True,
                                                  prefix="compile_")


def t2(ctx):
    batch, seq = (2, 32) if ctx.smoke else (16, 1024)
    preset = "tiny" if ctx.smoke else "llama-134m"
    yield "eager", lambda: train_step(ctx, "T2", preset, batch, seq, compiled=False)
    if ctx.compile_t2:
        yield "torch.compile", lambda: train_step(ctx, "T2", preset, batch, seq, compiled=True,
                                                  prefix="compile_")
    else:
        ctx.skip("T2", "torch.compile", "not asked for (--no-compile, or --smoke without --compile)")


def sequence_logps(logits, ids, mask):
    """Sum over the masked positions of log p(ids[t+1] | ids[..t]), in fp32 (the plain way)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (tok * mask).sum(-1)


def dpo_step(ctx, preset, pairs, seq, compiled, prefix=""):
    """Sigmoid DPO: policy fwd+bwd on chosen and rejected in one batch, reference log-probs given."""
    model = build_llama(ctx, preset)
    model.train()
    opt = adamw(ctx, model, lr=5e-7)
    if compiled:
        torch._dynamo.reset()  # drop graphs compiled for an earlier model
    fwd = torch.compile(model) if compiled else model
    vocab, beta = model.config.vocab_size, 0.1
    # Convention: the first quarter of each sequence is the prompt shared by chosen and rejected;
    # the loss counts the response tokens only.
    prompt_len = seq // 4
    prompt = random_ids(ctx, vocab, pairs, prompt_len)
    chosen = torch.cat([prompt, random_ids(ctx, vocab, pairs, seq - prompt_len)], 1)
    rejected = torch.cat([prompt, random_ids(ctx, vocab, pairs, seq - prompt_len)], 1)
    ids = torch.cat([chosen, rejected])  # [2·pairs, seq]
    mask = torch.zeros(2 * pairs, seq - 1, device=ctx.device)
    mask[:, prompt_len - 1:] = 1.0  # targets at positions ≥ prompt_len
    ref_logps = -2.0 * (seq - prompt_len) + torch.randn(2 * pairs, device=ctx.device)

    def step():
        with ctx.autocast():
            logits = fwd(input_ids=ids, use_cache=False).logits
        logps = sequence_logps(logits, ids, mask)
        margin = (logps[:pairs] - ref_logps[:pairs]) - (logps[pairs:] - ref_logps[pairs:])
        loss = -F.logsigmoid(beta * margin).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = time_ms(ctx, step)
    # tokens/s counts every token the policy processes: 2·pairs·seq per step.
    tok_s = 2 * pairs * seq / (median(times) / 1e3)
    mode = "torch.compile" if compiled else "eager"
    what = f"DPO step {preset} {pairs} pairs x {seq} ({mode})"
    ctx.add("T3", what, prefix + "tokens_per_s", tok_s, "tok/s", samples_ms=times)
    ctx.add("T3", what, prefix + "peak_mem_gib", peak_gib(ctx), "GiB")


def t3(ctx):
    pairs, seq = (2, 32) if ctx.smoke else (4, 1024)
    preset = "tiny" if ctx.smoke else "llama-1b"
    yield "eager", lambda: dpo_step(ctx, preset, pairs, seq, compiled=False)
    if ctx.compile:
        yield "torch.compile", lambda: dpo_step(ctx, preset, pairs, seq, compiled=True,
                                                prefix="compile_")


def generate(ctx, tid, preset, batch, prompt_len, new_tokens):
    """HF generate with temperature-0.7 sampling, pure bf16 weights, the default (dynamic) cache."""
    model = build_llama(ctx, preset, dtype=ctx.low)
    model.eval()
    ids = random_ids(ctx, model.config.vocab_size, batch, prompt_len)
    # top_k=0 / top_p=1.0 turn off HF's default top-k 50: plain temperature sampling, as in the
    # paper's PPO recipe. min_new_tokens makes every call produce exactly new_tokens tokens.
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7, top_k=0,
                  top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)

    def run():
        with torch.inference_mode():
            out = model.generate(ids, **kwargs)
        assert out.shape == (batch, prompt_len + new_tokens), out.shape

    times = time_ms(ctx, run, warmup=ctx.gen_warmup, iters=ctx.gen_iters)
    # Convention: generated tokens over the whole generate() call, prefill included.
    tok_s = batch * new_tokens / (median(times) / 1e3)
    what = f"HF generate {preset} {batch} x ({prompt_len} + {new_tokens} new), T=0.7"
    ctx.add(tid, what, "gen_tokens_per_s", tok_s, "tok/s", samples_ms=times)
    ctx.add(tid, what, "peak_mem_gib", peak_gib(ctx), "GiB")


def t4(ctx):
    preset = "tiny" if ctx.smoke else "llama-1b"
    shape = (4, 8, 16) if ctx.smoke else (64, 128, 256)
    yield "rollouts", lambda: generate(ctx, "T4", preset, *shape)


def t5(ctx):
    preset = "tiny" if ctx.smoke else "llama-1b"
    shape = (1, 8, 16) if ctx.smoke else (1, 128, 256)
    yield "decode batch 1", lambda: generate(ctx, "T5", preset, *shape)


def logprob_baseline(ctx, tokens, hidden, vocab):
    """Unfused per-token log-probs: logits = h @ W.T (bf16), fp32 log_softmax, gather.

    This is what Principle 5 says prefer never does: the [tokens × vocab] logits, their fp32 copy
    and its log_softmax all exist at once. The fp32 upcast is the usual one (HF's loss and TRL do it).
    Backward is w.r.t. h and W with d(sum of log-probs) as the upstream gradient.
    """
    h = (torch.randn(tokens, hidden, device=ctx.device) / hidden**0.5).to(ctx.low).requires_grad_()
    w = (torch.randn(vocab, hidden, device=ctx.device) * 0.02).to(ctx.low).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device=ctx.device)

    def logps():
        logits = h @ w.T
        return logits.float().log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)

    def fwd():
        with torch.no_grad():
            logps()

    def fwd_bwd():
        # autograd.grad returns dh and dW without accumulating into .grad between calls.
        torch.autograd.grad(logps().sum(), (h, w))

    what = f"log-probs unfused, {tokens} tok, hidden {hidden}, vocab {vocab}"
    free_memory(ctx)
    base = allocated_gib(ctx)
    reset_peak(ctx)
    times = time_ms(ctx, fwd_bwd)
    extra = None if base is None else peak_gib(ctx) - base
    ctx.add("T7", what, "fwd_bwd_ms", median(times), "ms", samples_ms=times)
    # Extra = peak during fwd+bwd minus what h, W and the targets hold; dh and dW (0.5 GiB at
    # llama-1b widths) are outputs and count in it.
    ctx.add("T7", what, "extra_mem_gib", extra, "GiB")
    times = time_ms(ctx, fwd)
    ctx.add("T7", what, "fwd_ms", median(times), "ms", samples_ms=times)


def t7(ctx):
    shape = (64, 32, 300) if ctx.smoke else (8192, 2048, 128256)
    yield "unfused", lambda: logprob_baseline(ctx, *shape)


def gqa_sdpa():
    """causal GQA through SDPA: enable_gqa=True where torch has it, else K/V repeated per group."""
    q, kv = torch.zeros(1, 4, 2, 8), torch.zeros(1, 2, 2, 8)
    try:
        F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
    except TypeError:
        def attn(q, k, v):
            rep = q.shape[1] // k.shape[1]
            return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1),
                                                  v.repeat_interleave(rep, 1), is_causal=True)
        return attn, "repeat_interleave"
    return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                           enable_gqa=True)), "enable_gqa"


def attention(ctx, batch, heads, kv_heads, seq, head_dim, backend=None):
    """SDPA causal GQA forward and forward+backward, [B, H, T, hd] layout, bf16."""
    attn, how = gqa_sdpa()
    q = torch.randn(batch, heads, seq, head_dim, device=ctx.device, dtype=ctx.low,
                    requires_grad=True)
    k, v = (torch.randn(batch, kv_heads, seq, head_dim, device=ctx.device, dtype=ctx.low,
                        requires_grad=True) for _ in range(2))
    dout = torch.randn_like(q)

    def fwd():
        with torch.no_grad():
            attn(q, k, v)

    def fwd_bwd():
        torch.autograd.grad(attn(q, k, v), (q, k, v), dout)

    if backend is not None:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        pinned = sdpa_kernel(getattr(SDPBackend, backend))
    else:
        pinned = contextlib.nullcontext()
    # FLOP convention: causal forward = 4·B·H·T²·hd / 2 (QKᵀ and PV, half the score matrix);
    # forward+backward = 3.5 × forward (backward = 2.5 × forward: five matmuls against two,
    # as FlashAttention-2's paper counts it).
    fwd_flops = 4 * batch * heads * seq * seq * head_dim / 2
    # Sub-millisecond calls: ten times the usual warm-up and iterations, still well under a second.
    warmup, iters = 10 * ctx.warmup, 10 * ctx.iters
    with pinned:
        try:
            fwd()
        except RuntimeError as e:
            if backend is None:
                raise
            # SDPA says "No available kernel" when the pinned backend refuses this shape/flag.
            raise Unsupported(f"{backend} cannot run it here: {str(e).splitlines()[0]}") from e
        t_fwd = median(time_ms(ctx, fwd, warmup, iters))
        t_fb = median(time_ms(ctx, fwd_bwd, warmup, iters))
    label = backend.lower() if backend else "default dispatch"
    what = f"SDPA causal GQA {batch}x{heads}({kv_heads}kv)x{seq}x{head_dim} [{label}, {how}]"
    tid, prefix = "T8", ("" if backend is None else backend.lower() + "_")
    ctx.add(tid, what, prefix + "fwd_ms", t_fwd, "ms")
    ctx.add(tid, what, prefix + "fwd_tflops", fwd_flops / (t_fwd / 1e3) / 1e12, "TFLOP/s")
    ctx.add(tid, what, prefix + "fwd_bwd_ms", t_fb, "ms")
    ctx.add(tid, what, prefix + "fwd_bwd_tflops", 3.5 * fwd_flops / (t_fb / 1e3) / 1e12,
            "TFLOP/s")


def t8(ctx):
    shape = (2, 4, 2, 64, 16) if ctx.smoke else (8, 32, 8, 1024, 64)
    yield "default", lambda: attention(ctx, *shape)
    if ctx.cuda:
        # Each backend pinned in turn, for the kernel writers; one that cannot run this shape
        # (e.g. memory-efficient attention with enable_gqa) is skipped.
        for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
            yield backend.lower(), (lambda b=backend: attention(ctx, *shape, backend=b))


TARGETS = {
    "T1": t1, "T2": t2, "T3": t3, "T4": t4, "T5": t5, "T7": t7, "T8": t8,
}


# ---------------------------------------------------------------------------------------------
# Running, printing, saving
# ---------------------------------------------------------------------------------------------

def run_guarded(ctx, tid, what, fn):
    """Runs one workload; out-of-memory or any other error skips it and the run goes on."""
    print(f"[{tid}] {what} ...", flush=True)
    free_memory(ctx)
    reset_peak(ctx)  # each workload's peak counts its own model, optimiser state and activations
    t0 = time.perf_counter()
    try:
        fn()
    except torch.cuda.OutOfMemoryError as e:
        ctx.skip(tid, what, "out of memory: " + str(e).splitlines()[0])
    except Unsupported as e:
        ctx.skip(tid, what, str(e))
    except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
        traceback.print_exc(file=sys.stderr)
        ctx.skip(tid, what, f"{type(e).__name__}: " + (str(e).splitlines() or [""])[0][:300])
    else:
        print(f"  done in {time.perf_counter() - t0:.1f} s", flush=True)
    free_memory(ctx)


def fmt(value, unit):
    if value is None:
        return "n/a"
    if unit == "tok/s":
        return f"{value:,.0f}"
    if unit in ("%", "TFLOP/s"):
        return f"{value:.1f}"
    if unit == "ms":
        return f"{value:.3f}"
    return f"{value:.2f}"


def print_table(ctx):
    header = ("id", "workload", "metric", "value", "unit", "DESIGN.md PyTorch")
    lines = [(r["id"], r["workload"], r["metric"], fmt(r["value"], r["unit"]), r["unit"],
              "" if r["design_pytorch"] is None else fmt(r["design_pytorch"], r["unit"]))
             for r in ctx.rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    rule = "-+-".join("-" * w for w in widths)
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(rule)
    for line in lines:
        cells = [c.rjust(w) if i in (3, 5) else c.ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths))]
        print(" | ".join(cells))
    for s in ctx.skipped:
        print(f"skipped {s['id']} ({s['workload']}): {s['reason']}")


def metadata(ctx, args):
    import transformers

    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__, transformers=transformers.__version__,
        python=platform.python_version(), cuda=torch.version.cuda,
        device=str(ctx.device), smoke=ctx.smoke, peak_bf16_flops=PEAK_BF16_FLOPS,
        warmup=args.warmup, iters=args.iters, gen_iters=args.gen_iters,
        timing="median of iters after warm-up, "
               + ("CUDA events" if ctx.cuda else "time.perf_counter"),
    )
    if ctx.cuda:
        meta.update(gpu=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version(),
                    gpu_mem_gib=torch.cuda.get_device_properties(0).total_memory / 2**30)
    else:
        meta.update(gpu=None, cpu=platform.processor() or platform.machine())
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default=DEFAULT_TARGETS,
                    help=f"comma-separated, from {','.join(TARGETS)} (default {DEFAULT_TARGETS})")
    ap.add_argument("--out", default=None, help="write every number here as JSON")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--gen-iters", type=int, default=3, help="timed generate() calls for T4, T5")
    ap.add_argument("--compile", action="store_true",
                    help="also torch.compile T1 and T3 (T2 tries it anyway)")
    ap.add_argument("--no-compile", action="store_true", help="skip T2's torch.compile run")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes on the CPU in float32: checks the script, not the speed")
    args = ap.parse_args()

    targets = [t.strip().upper() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {','.join(unknown)}; this script runs {','.join(TARGETS)} "
                 "(T6, the PPO iteration, is not benchmarked here)")
    if args.iters < 1 or args.gen_iters < 1 or args.warmup < 0:
        ap.error("--iters and --gen-iters must be ≥ 1 and --warmup ≥ 0")
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench_torch.py: CUDA is not available, so there is nothing to measure. Run it on "
                 "the GPU host, or pass --smoke for a tiny CPU run that only checks the script.")
    try:
        import transformers  # noqa: F401
    except ImportError:
        sys.exit("bench_torch.py needs transformers (5.x) beside torch.")

    torch.manual_seed(0)
    ctx = Ctx(args)
    meta = metadata(ctx, args)
    print(f"torch {meta['torch']}, transformers {meta['transformers']}, "
          f"device {meta['gpu'] or meta['device']}" + (" (SMOKE: tiny shapes, CPU fp32)"
                                                       if ctx.smoke else ""), flush=True)

    for tid in targets:
        for what, fn in TARGETS[tid](ctx):
            run_guarded(ctx, tid, what, fn)

    print_table(ctx)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, targets=targets, results=ctx.rows, skipped=ctx.skipped),
                      f, indent=1)
        print(f"wrote {args.out}")
    return 0 if ctx.rows else 1


if __name__ == "__main__":
    sys.exit(main())
