"""Training-step benchmark: DFGN presets against diffusers' UNet3DConditionModel of similar size, same input (issue 5).

    python bench/train_step.py                                   # a GPU: paper and small, 8 x 256 x 256, bf16
    python bench/train_step.py --data DATASET_DIR                # ... and the data-wait share of the real loader
    python bench/train_step.py --device cpu --presets tiny --baseline-channels 32 64 --batch 1 --steps 2 --no-fit

Per model, in one run: clips/s of a whole training step (forward, masked loss, backward, AdamW; through DeepSpeed
ZeRO-2 when deepspeed is installed, else torch's AdamW on bf16 weights), FLOPs per step (torch's FlopCounterMode),
achieved TFLOP/s and its share of the bf16 matmul rate (--peak-tflops: 775 measured on one H100), and peak memory.
Then the largest micro-batch of the first preset that fits, with and without gradient checkpointing. With --data,
the real loader (Parquet -> PNG decode -> 256 px) feeds the step through an SD-shaped VAE with random weights (the
same compute as the real one), and the share of time the step waited for data is reported.
Needs torch, diffusers, pyyaml, pyarrow, pillow; deepspeed is optional. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from diffusers import AutoencoderKL, UNet3DConditionModel  # noqa: E402
from provenance import code_version, machine  # noqa: E402

from rdtf.trainer.dfgn import DFGN, read_model_config  # noqa: E402
from rdtf.trainer.masks import frame_mask, masked_mse  # noqa: E402

TEXT_TOKENS = 77  # open_clip context length
SD_VAE = {  # the shape of Stable Diffusion's AutoencoderKL (factor 8, 4 latent channels); weights random here
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 256,
}


def build(name: str, args: argparse.Namespace) -> tuple[torch.nn.Module, int]:
    """A model by name: a DFGN preset (configs/NAME.yaml) or `baseline` (UNet3DConditionModel)."""
    if name == "baseline":
        channels = tuple(args.baseline_channels)
        model = UNet3DConditionModel(
            in_channels=4,
            out_channels=4,
            block_out_channels=channels,
            cross_attention_dim=args.text_dim,
            attention_head_dim=min(64, channels[0]),  # diffusers: effectively the head dim in 3D blocks
            norm_num_groups=min(32, channels[0] // 4),
            down_block_types=("CrossAttnDownBlock3D",) * (len(channels) - 1) + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (len(channels) - 1),
        )
        return model, 4
    config = read_model_config(str(REPO / "configs" / f"{name}.yaml")) | {"in_channels": 4}
    config["cross_attention_dim"] = config.get("cross_attention_dim") or args.text_dim
    args.text_dim = config["cross_attention_dim"]
    return DFGN(**config), 4


def forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(model, DFGN) or isinstance(getattr(model, "module", None), DFGN):
        return model(batch["sample"], batch["timestep"], batch["text"], batch["condition"])
    return model(batch["sample"], batch["timestep"], batch["text"]).sample


def make_batch(size: int, channels: int, args: argparse.Namespace, device: torch.device, dtype) -> dict:
    latent = args.resolution // 8
    shape = (size, channels, args.frames, latent, latent)
    return {
        "sample": torch.randn(shape, device=device, dtype=dtype),
        "condition": torch.randn(shape, device=device, dtype=dtype),
        "noise": torch.randn(shape, device=device, dtype=torch.float32),
        "timestep": torch.randint(0, 1000, (size,), device=device),
        "text": torch.randn(size, TEXT_TOKENS, args.text_dim, device=device, dtype=dtype),
        "frames": frame_mask(torch.full((size,), args.frames, device=device)),
    }


def engine_for(model: torch.nn.Module, batch_size: int, bf16: bool, args: argparse.Namespace):
    """(step function, module): DeepSpeed ZeRO-2 when installed, else torch AdamW on the (bf16) weights."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    try:
        import deepspeed
    except ImportError:
        model = model.to(torch.bfloat16) if bf16 else model

        def step(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step, model
    config = {
        "train_micro_batch_size_per_gpu": batch_size,
        "zero_optimization": {"stage": 2},
        "bf16": {"enabled": bf16, "check_grad_overflow": args.overflow_check},
        "gradient_clipping": 1.0,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    def step(loss):
        engine.backward(loss)
        engine.step()

    return step, engine


def train_steps(model, step, batch, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps after one warm-up step."""
    for i in range(steps + 1):
        if i == 1:
            sync(device)
            started = time.perf_counter()
        loss = masked_mse(forward(model, batch).float(), batch["noise"], batch["frames"])
        step(loss)
    sync(device)
    return (time.perf_counter() - started) / steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(name: str, args: argparse.Namespace) -> int:
    """FLOPs of one forward and backward pass (torch counts matmuls and convolutions), on the meta device: the
    count needs shapes only, so it allocates nothing."""
    meta = torch.device("meta")
    with meta:
        model, channels = build(name, args)
    batch = make_batch(args.batch, channels, args, meta, torch.float32)
    counter = FlopCounterMode(display=False)
    with counter:
        masked_mse(forward(model, batch).float(), batch["noise"], batch["frames"]).backward()
    return counter.get_total_flops()


def measure(name: str, args, device, dtype) -> dict:
    model, channels = build(name, args)
    params = sum(p.numel() for p in model.parameters())
    model = model.to(device)
    batch = make_batch(args.batch, channels, args, device, dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, module = engine_for(model, args.batch, dtype == torch.bfloat16, args)
    seconds = train_steps(module, step, batch, args.steps, device)
    flops = step_flops(name, args)
    tflops = flops / seconds / 1e12
    result = {
        "model": name,
        "parameters": params,
        "clips_per_s": args.batch / seconds,
        "step_s": seconds,
        "tflop_per_step": flops / 1e12,
        "tflops": tflops,
        "share_of_peak": tflops / args.peak_tflops,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    del model, module, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def profile(name: str, args, device, dtype) -> None:
    """torch.profiler over 3 training steps of `name` (after 2 warm-up steps): the operators that take the most
    device time and the most host time, to say where a step's time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, channels = build(name, args)
    model = model.to(device)
    batch = make_batch(args.batch, channels, args, device, dtype)
    step, module = engine_for(model, args.batch, dtype == torch.bfloat16, args)
    train_steps(module, step, batch, 1, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        train_steps(module, step, batch, 3, device)
    device_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    print(f"profile of {name}, 3 steps at micro-batch {args.batch}: by device time")
    print(averages.table(sort_by=device_key, row_limit=25, max_name_column_width=60))
    print(f"profile of {name}: by host time")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
    del model, module, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fits(name: str, batch_size: int, checkpointing: bool, args, device, dtype) -> bool:
    """Whether one training step of `name` at `batch_size` runs out of GPU memory."""
    model, channels = build(name, args)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model = model.to(device)
    try:
        step, module = engine_for(model, batch_size, dtype == torch.bfloat16, args)
        train_steps(module, step, make_batch(batch_size, channels, args, device, dtype), 1, device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del model
        torch.cuda.empty_cache()


def largest_batch(name: str, checkpointing: bool, args, device, dtype) -> int:
    """Doubling, then bisection, on whether a step fits."""
    low, high = 0, 1
    while high <= args.max_batch and fits(name, high, checkpointing, args, device, dtype):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(name, middle, checkpointing, args, device, dtype) else (low, middle)
    return low


def data_wait(name: str, args, device, dtype) -> dict:
    """The real loader feeding the step (with an SD-shaped VAE encode): the share of time spent waiting for data."""
    from rdtf.schemas.reader import open_dataset
    from rdtf.trainer.config import DataConfig
    from rdtf.trainer.data import ClipLoader, ParquetRows

    model, channels = build(name, args)
    step, module = engine_for(model.to(device), args.batch, dtype == torch.bfloat16, args)
    vae = AutoencoderKL(**SD_VAE).to(device, dtype).requires_grad_(False)
    reader = open_dataset(args.data)
    config = DataConfig(shuffle_buffer=256, decode_threads=args.decode_threads)
    loader = ClipLoader(ParquetRows(reader, 0, 1, seed=0), config, args.resolution, seed=0)
    waited, started = 0.0, None
    for i in range(args.steps + 1):
        if i == 1:
            sync(device)
            started, waited = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        clips = loader.next_batch(args.batch)
        waited += time.perf_counter() - t0
        b, c, f, h, w = clips.frames.shape
        frames = clips.frames.to(device, dtype).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        with torch.no_grad():
            latents = vae.encode(frames).latent_dist.sample() * 0.18215  # SD-VAE's scaling_factor
        latents = latents.reshape(b, f, channels, h // 8, w // 8).permute(0, 2, 1, 3, 4)
        valid = frame_mask(clips.num_valid).to(device)
        batch = make_batch(b, channels, args, device, dtype) | {"sample": latents, "frames": valid}
        loss = masked_mse(forward(module, batch).float(), batch["noise"], batch["frames"])
        step(loss)
    sync(device)
    total = time.perf_counter() - started
    loader.close()
    return {"model": name, "data_wait_fraction": waited / total, "clips_per_s": args.steps * args.batch / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", nargs="+", default=["paper", "small"])
    parser.add_argument("--baseline-channels", nargs="+", type=int, default=[320, 640, 1024, 1280])
    parser.add_argument("--batch", type=int, default=8, help="micro-batch (clips)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=256, help="pixels; latents are 1/8")
    parser.add_argument("--text-dim", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=775.0, help="bf16 matmul rate of the GPU")
    parser.add_argument("--max-batch", type=int, default=128)
    parser.add_argument("--no-fit", action="store_true", help="skip the largest-micro-batch search")
    parser.add_argument(
        "--overflow-check", action="store_true", help="DeepSpeed's bf16 overflow check on (rdtf turns it off)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip diffusers' UNet3DConditionModel")
    parser.add_argument("--profile", action="store_true", help="then torch.profiler tables of the first preset")
    parser.add_argument("--data", help="a dataset folder: also measure the data-wait share of the real loader")
    parser.add_argument("--decode-threads", type=int, default=8)
    parser.add_argument("--out", default="train_step.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if "RANK" not in os.environ:  # DeepSpeed wants a process group, even of one
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", "29533")
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    results = {
        "machine": machine(gpu),
        "code": code_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "args": vars(args),
    }
    names = [*args.presets, *([] if args.no_baseline else ["baseline"])]
    results["models"] = [measure(name, args, device, dtype) for name in names]
    for r in results["models"]:
        print(
            f"{r['model']:>9}: {r['parameters'] / 1e6:7.1f} M params, {r['clips_per_s']:7.2f} clips/s, "
            f"{r['tflop_per_step']:8.2f} TFLOP/step, {r['tflops']:7.2f} TFLOP/s = {100 * r['share_of_peak']:.1f}% "
            f"of peak, peak memory {r['peak_memory_gib'] or float('nan'):.1f} GiB"
        )
    if device.type == "cuda" and not args.no_fit:
        first = args.presets[0]
        results["largest_micro_batch"] = {
            "model": first,
            "plain": largest_batch(first, False, args, device, dtype),
            "gradient_checkpointing": largest_batch(first, True, args, device, dtype),
        }
        print(f"largest micro-batch of {first}: {results['largest_micro_batch']}")
    if args.profile:
        profile(args.presets[0], args, device, dtype)
    if args.data:
        results["data_wait"] = data_wait(args.presets[0], args, device, dtype)
        print(f"data path: {results['data_wait']}")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
