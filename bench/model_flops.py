"""FLOPs per pixel and parameter counts of the model presets (and a few references).

Run: ``.venv/bin/python bench/model_flops.py [--size 512] [--time]``; writes
``bench/results/model_flops.json``. FLOPs come from torch's FlopCounterMode on one eval-mode
forward pass (convolutions and matrix products only; a multiply-add counts 2 FLOPs), run on the
``meta`` device. ``--time`` adds a CPU forward latency (batch 1), which is machine dependent.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from geopsp.model import PRESETS, build_model, count_parameters, model_flops, spec_from_preset
from geopsp.model.pspnet import drop_unused_stages

CLASSES = 21
BANDS = 3

# (label, preset, overrides): presets first, then variants worth comparing.
VARIANTS = [
    ("paper", "paper", {}),
    ("fast", "fast", {}),
    ("paper-os16", "paper", {"output_stride": 16}),
    ("paper-r101", "paper", {"encoder": "resnet101"}),
    ("fast-r34", "fast", {"encoder": "resnet34"}),
    ("fast-r34-d256", "fast", {"encoder": "resnet34", "decoder_channels": 256}),
    ("r18-depth5-os8", "paper", {"encoder": "resnet18"}),
    ("efficientnet-b0-depth5-os8", "paper", {"encoder": "efficientnet-b0"}),
    ("mobilenet_v2-depth5-os8", "paper", {"encoder": "mobilenet_v2"}),
]


def measure(model: torch.nn.Module, size: int) -> float:
    return model_flops(model, in_channels=BANDS, height=size) / float(size * size)


def cpu_ms(model: torch.nn.Module, size: int, repeats: int = 3) -> float:
    model = model.eval()
    x = torch.randn(1, BANDS, size, size)
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--time", action="store_true", help="also time a CPU forward pass")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model_flops.json")
    args = parser.parse_args()

    rows = []
    for label, preset, overrides in VARIANTS:
        spec = spec_from_preset(preset, in_channels=BANDS, num_classes=CLASSES, **overrides)
        model = build_model(spec)
        row = {
            "name": label,
            "preset": label if label in PRESETS else None,
            "spec": spec.to_dict(),
            "parameters": count_parameters(model),
            "parameters_eval": count_parameters(model)
            - (sum(p.numel() for p in model.aux_head.parameters()) if getattr(model, "aux_head", None) else 0),
        }
        if args.time:
            row["cpu_ms_batch1"] = round(cpu_ms(model, args.size), 1)
        row["flops_per_pixel"] = measure(model, args.size)
        rows.append(row)
        print(f"{label:30s} {row['flops_per_pixel'] / 1e6:8.4f} MFLOP/px  {row['parameters'] / 1e6:7.2f} M params")

    import segmentation_models_pytorch as smp

    ref = smp.PSPNet(encoder_weights=None, classes=CLASSES, in_channels=BANDS)
    row = {
        "name": "smp-PSPNet-default",
        "preset": None,
        "spec": {
            "smp": "PSPNet()",
            "encoder": "resnet34",
            "encoder_depth": 3,
            "psp_out_channels": 512,
            "upsampling": 8,
        },
        "parameters": count_parameters(ref),
    }
    # smp keeps ResNet-34's stages 4 and 5 although a depth-3 cut never runs them.
    drop_unused_stages(ref.encoder, 3)
    row["parameters_eval"] = row["parameters_run"] = count_parameters(ref)
    if args.time:
        row["cpu_ms_batch1"] = round(cpu_ms(ref, args.size), 1)
    row["flops_per_pixel"] = measure(ref, args.size)
    rows.append(row)
    print(
        f"{row['name']:30s} {row['flops_per_pixel'] / 1e6:8.4f} MFLOP/px  {row['parameters'] / 1e6:7.2f} M params "
        f"({row['parameters_run'] / 1e6:.2f} M run)"
    )

    result = {
        "what": "FLOPs per input pixel (FlopCounterMode, eval forward, multiply-add = 2 FLOPs, conv/matmul only)",
        "input": {"size": args.size, "bands": BANDS, "classes": CLASSES, "batch": 1},
        "torch": torch.__version__,
        "smp": smp.__version__,
        "machine": platform.machine(),
        "models": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
