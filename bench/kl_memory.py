"""Peak memory and time of the NextLat loss: token-chunked frozen-head KL vs materialised logits.

    python bench/kl_memory.py [--seq 512] [--batch 4] [--width 256] [--vocab 32768]
                              [--horizons 1,4] [--chunks 256,1024,4096] [--repeats 3]
                              [--json PATH]

What is measured
----------------
The loss alone (`nextlat_pt.model.nextlat_loss.nextlat_loss`, forward + backward) on random
hidden states, logits, tokens and a real ψ (`LatentDynamics`), for each horizon d and

- `chunked c`: the framework's loss with `kl_chunk_tokens = c`;
- `materialised`: the same loss with the KL written the plain-autograd way (what most
  reimplementations do, and close to what this framework did before): per rollout step,
  student logits = ĥ Wᵀ (W detached), log_softmax, Σ p (log p − log q), with the full
  teacher log-probabilities kept. Autograd then keeps V-wide tensors for every step.

Every (variant, d, c) runs in a fresh subprocess. Peak memory is the growth of the process's
peak resident set over its resident set just before the loss runs (inputs, ψ and the logits
already allocated), read from VmHWM; glibc's mmap threshold is pinned at 64 KiB so freed
tensors go back to the OS and the peak follows live tensors; the kernel's peak mark (VmHWM) is
reset just before the measured steps. On CUDA it is
`torch.cuda.max_memory_allocated` over the same baseline. Time: median over repeats of one
forward + backward, in the same subprocess.

Expected from the design: the chunked peak depends on c (a few c × V float32 buffers) and
not on d; the materialised peak grows with d by about 2 × T·B·V·4 bytes per rollout step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

MIB = 1 << 20


def _materialised_kl(predicted, head_weight, teacher_log_probs, mask, temperature):
    """The plain-autograd KL of one rollout step (the reference variant)."""
    import torch.nn.functional as F

    from nextlat_pt.model.nextlat_loss import masked_mean

    log_q = F.log_softmax(F.linear(predicted, head_weight.detach()).float() / temperature, -1)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - log_q)).sum(-1)
    return masked_mean(kl, mask)


def _run_one(args: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: build the inputs, run the loss `repeats` times, report peak/time."""
    import torch
    import torch.nn.functional as F

    from nextlat_pt.convert.world import single_process_world
    from nextlat_pt.model.gpt import ModelSpec, transformer_config
    from nextlat_pt.model.nextlat_loss import NextLatLossConfig, next_token_loss, nextlat_loss
    from nextlat_pt.model.psi import LatentDynamics
    from nextlat_pt.model.shape import psi_width

    torch.set_num_threads(args["threads"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    T, B, D, V = args["seq"], args["batch"], args["width"], args["vocab"]
    d = args["horizon"]
    with single_process_world(0):
        gen = torch.Generator().manual_seed(0)
        config = transformer_config(ModelSpec(
            num_layers=1, hidden_size=D, num_heads=4, num_query_groups=4,
            ffn_hidden_size=2 * D, vocab_size=V, max_position_embeddings=T))
        psi = LatentDynamics(config, psi_width(D, 1.0)).to(device)
        head = (torch.randn(V, D, generator=gen) * D ** -0.5).to(device).requires_grad_()
        embeddings = torch.randn(T, B, D, generator=gen).to(device)
        labels = torch.randint(0, V, (T, B), generator=gen).to(device)
        mask = torch.ones(T, B, device=device)
        trunk_in = torch.randn(T, B, D, generator=gen).to(device).requires_grad_()

        def step(n: int) -> None:
            """One forward + backward on the first n positions."""
            hidden = torch.tanh(trunk_in[:n])  # stands in for the trunk: gradients reach it
            logits = hidden @ head.T
            if args["variant"] == "chunked":
                cfg = NextLatLossConfig(horizon=d, kl_chunk_tokens=args["chunk"])
                total = nextlat_loss(hidden=hidden, logits=logits, labels=labels[:n],
                                     input_embeddings=embeddings[:n], head_weight=head,
                                     psi=psi, loss_mask=mask[:n], doc_ids=None, cfg=cfg).total
            else:
                teacher = F.log_softmax(logits.detach().float(), -1)
                latent = kl = hidden.new_zeros(())
                predicted = hidden
                for i in range(1, d + 1):
                    predicted = psi(predicted[:-1], embeddings[i:n])
                    latent = latent + F.smooth_l1_loss(predicted, hidden.detach()[i:])
                    kl = kl + _materialised_kl(predicted, head, teacher[i:], mask[i:n], 1.0)
                total = next_token_loss(logits, labels[:n], mask[:n]) + (latent + kl) / d
            total.backward()
            trunk_in.grad = None
            head.grad = None
            psi.zero_grad(set_to_none=True)

        # Lazy one-time allocations (thread pools, kernels) happen in a short warm-up whose
        # own peak stays far below the measured one.
        step(min(2 * d + 2, T))
        times = []
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _current_rss()
            _reset_peak_rss()
        for _ in range(args["repeats"]):
            start = time.perf_counter()
            step(T)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        if cuda:
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = _peak_rss() - base
    logits_bytes = T * B * V * 4
    return {"variant": args["variant"], "horizon": d, "chunk": args.get("chunk"),
            "peak_mib": peak / MIB, "peak_over_logits": peak / logits_bytes,
            "median_s": statistics.median(times), "device": str(device)}


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS mark (VmHWM) from the current RSS. ru_maxrss cannot be
    used: it survives exec, so a child started by a large process reports the parent's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(seq: int = 512, batch: int = 4, width: int = 256, vocab: int = 32768,
            horizons: tuple[int, ...] = (1, 4), chunks: tuple[int, ...] = (256, 1024, 4096),
            repeats: int = 3, threads: int = 1) -> dict[str, Any]:
    """Run every variant in its own subprocess; returns the rows and the setting."""
    rows = []
    common = dict(seq=seq, batch=batch, width=width, vocab=vocab, repeats=repeats,
                  threads=threads)
    plans = [dict(common, variant="materialised", horizon=d) for d in horizons]
    plans += [dict(common, variant="chunked", horizon=d, chunk=c)
              for d in horizons for c in chunks]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    for plan in plans:
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--one", json.dumps(plan)],
            capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"kl_memory subprocess failed for {plan}:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    logits_mib = seq * batch * vocab * 4 / MIB
    return {"setting": dict(common, horizons=list(horizons), chunks=list(chunks),
                            logits_mib=logits_mib),
            "machine": f"{platform.processor() or platform.machine()}, torch threads {threads}",
            "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    s = result["setting"]
    lines = [f"NextLat loss fwd+bwd, T={s['seq']} B={s['batch']} D={s['width']} "
             f"V={s['vocab']} (one [T,B,V] fp32 tensor = {s['logits_mib']:.0f} MiB), "
             f"median of {s['repeats']}",
             f"{'variant':<16}{'d':>3}{'peak MiB':>10}{'× logits':>10}{'s/step':>9}"]
    for r in result["rows"]:
        name = r["variant"] if r["variant"] != "chunked" else f"chunked {r['chunk']}"
        lines.append(f"{name:<16}{r['horizon']:>3}{r['peak_mib']:>10.0f}"
                     f"{r['peak_over_logits']:>10.2f}{r['median_s']:>9.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--horizons", default="1,4")
    parser.add_argument("--chunks", default="256,1024,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_run_one(json.loads(args.one))))
        return
    result = measure(args.seq, args.batch, args.width, args.vocab,
                     tuple(int(x) for x in args.horizons.split(",")),
                     tuple(int(x) for x in args.chunks.split(",")), args.repeats, args.threads)
    print("command: python bench/kl_memory.py " + " ".join(sys.argv[1:]))
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
