"""Does DFGN use its given frames? The diagnosis of issue 15, as a repeatable experiment.

The tiny DFGN is trained directly (plain AdamW, no DeepSpeed, no data pipeline) on procedural clips -- a square that
slides over a flat background, random colours and sizes -- on the interpolation task only, in four variants:

    before      the condition encoder as it was before issue 15 (no identity path: convs and attention at their
                default initialisation) and epsilon prediction (the paper's);
    identity    rdtf's condition encoder (c + a learned part that starts at zero), epsilon prediction;
    identity-v  rdtf's condition encoder and v prediction;
    anchored-v  as identity-v, with the nearest-given anchor (`diffusion.anchor: nearest_given`, the tiny preset's).

Every --every steps it reports, on fixed held-out clips, noise and timesteps, the error of the model's estimate of the
clean generated frames (x0, comparable across epsilon and v) at t = 100, 500, 800, with the given frames supplied
and with the condition zeroed. A model that uses its condition has a much lower error with it.

    .venv/bin/python bench/condition_path.py --steps 400          # about 9 min per variant on 2 quiet cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rdtf.trainer.config import DiffusionConfig  # noqa: E402
from rdtf.trainer.dfgn import DFGN, read_model_config  # noqa: E402
from rdtf.trainer.diffusion import predict, train_scheduler, training_target  # noqa: E402
from rdtf.trainer.masks import condition_mask, masked_mse  # noqa: E402

VARIANTS = ("before", "identity", "identity-v", "anchored-v")
TIMESTEPS = (100, 500, 800)


class EncoderBefore(nn.Module):
    """The condition encoder before issue 15: the same layers, default initialisation, no identity path."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.convs, self.transformer = encoder.convs, encoder.transformer
        for layer in (self.convs[-1], self.transformer.proj_out):
            layer.reset_parameters()

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        frames = condition.transpose(1, 2).flatten(0, 1)
        return self.transformer(self.convs(frames), num_frames=condition.shape[2], return_dict=False)[0]


def clips(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3, 8, size, size) in [-1, 1]: a square of one colour sliding right over a flat background."""
    x = torch.empty(count, 3, 8, size, size)
    for i in range(count):
        background, colour = torch.rand(2, 3, generator=generator) * 2 - 1
        x[i] = background[:, None, None, None]
        side = int(torch.randint(size // 4, size // 2, (1,), generator=generator))
        left, top = torch.randint(0, size - side, (2,), generator=generator).tolist()
        for f in range(8):
            shift = f * (size - side - left) // 8
            x[i, :, f, top : top + side, left + shift : left + shift + side] = colour[:, None, None]
    return x


def x0_error(model, scheduler, anchor: str, z, given, timestep: int, noise, zero_condition: bool) -> float:
    """MSE of the clean-clip estimate on the frames that were not given."""
    t = torch.full((len(z),), timestep)
    condition = torch.zeros_like(z) if zero_condition else z * given[:, None, :, None, None]
    noisy = scheduler.add_noise(z, noise, t)
    text = torch.zeros(len(z), 77, model.config.cross_attention_dim)
    out = predict(model, scheduler, anchor, noisy, t, text, condition)
    a = scheduler.alphas_cumprod[t][:, None, None, None, None]
    if scheduler.config.prediction_type == "epsilon":
        x0 = (noisy - (1 - a).sqrt() * out) / a.sqrt()
    else:
        x0 = a.sqrt() * noisy - (1 - a).sqrt() * out
    return masked_mse(x0.clamp(-1, 1), z, 1 - given).item()


def run(variant: str, args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    config = read_model_config(REPO / "configs" / "tiny.yaml") | {"sample_size": args.size}
    model = DFGN(**config)
    if variant == "before":
        model.condition_encoder = EncoderBefore(model.condition_encoder)
    prediction = "v_prediction" if variant.endswith("-v") else "epsilon"
    anchor = "nearest_given" if variant == "anchored-v" else "none"
    scheduler = train_scheduler(DiffusionConfig(prediction_type=prediction))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    data = torch.Generator().manual_seed(args.seed)
    held = torch.Generator().manual_seed(10_000 + args.seed)
    test_z = clips(12, args.size, held)
    test_given = condition_mask("interpolate", torch.full((12,), 8), held)
    test_noise = torch.randn(test_z.shape, generator=held)
    started = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            model.eval()
            with torch.no_grad():
                cells = []
                for t in TIMESTEPS:
                    with_c, without = (
                        x0_error(model, scheduler, anchor, test_z, test_given, t, test_noise, zero)
                        for zero in (False, True)
                    )
                    cells.append(f"t={t} {with_c:.3f} / {without:.3f}")
            print(f"{variant:10s} step {step:4d}  x0 error, given / zeroed: " + "  ".join(cells)
                  + f"  ({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
            model.train()
        z = clips(args.batch, args.size, data)
        given = condition_mask("interpolate", torch.full((args.batch,), 8), data)
        t = torch.randint(0, 1000, (args.batch,), generator=data)
        noise = torch.randn(z.shape, generator=data)
        condition = z * given[:, None, :, None, None]
        out = predict(
            model, scheduler, anchor, scheduler.add_noise(z, noise, t), t, torch.zeros(args.batch, 77, 64), condition
        )
        loss = masked_mse(out, training_target(scheduler, z, noise, t), torch.ones(args.batch, 8))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=100, help="report every N steps")
    parser.add_argument("--size", type=int, default=16, help="frame size in pixels (16)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4, help="the tiny preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for variant in args.variants:
        run(variant, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
