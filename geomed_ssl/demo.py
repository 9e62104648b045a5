"""``geomed-ssl demo``: the main job on the bundled Indian Pines sample, with no arguments, in a few CPU minutes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from geomed_ssl.config import recipe_from_dict
from geomed_ssl.outdirs import prepare_out_dir, record_entries
from geomed_ssl.outfiles import atomic_path
from geomed_ssl.sample import CLASS_NAMES, LABELS, SAMPLE_DIR

log = logging.getLogger("geomed_ssl")

DEMO_RECIPE = {
    "data": {"kind": "raster", "patch_size": 32, "include": ["indian_pines.tif"], "num_workers": 0,
             "windows_per_read": 8, "stats_windows": 128},
    "model": {"embedding": "plain", "patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4},
    "method": {"name": "mae", "mask_ratio": 0.75, "norm_pix_loss": True, "decoder_embed_dim": 64,
               "decoder_depth": 2, "decoder_num_heads": 4},
    "train": {"batch_size": 32, "max_steps": 150, "base_lr": 1.5e-3, "warmup_steps": 15, "checkpoint_every": 50,
              "preview_every": 50, "log_every": 5, "seed": 0},
    # fine-tuning with 5 labelled pixels per class; identical for the pretrained and the random-init encoder. The
    # linear head: with 80 labelled pixels a UNETR decoder memorises them (test OA ~0.25 vs ~0.70, benchmarks/)
    "finetune": {"task": "segment", "head": "linear", "max_steps": 150, "batch_size": 16, "base_lr": 1e-3,
                 "warmup_steps": 15, "layer_decay": 0.75, "feature_size": 16, "loss": "ce"},
    "labels": {"per_class": 5, "ignore_value": 0, "split": "random", "seed": 0},
}


def run_demo(out: Path = Path("geomed-ssl-demo"), steps: int = 150, finetune_steps: int = 150) -> Path:
    """Pretrain a small MAE on Indian Pines, fine-tune it with 5 labels per class (and the same model from random
    initialisation), print OA / AA / kappa of both, and write the predicted map as GeoTIFF and PNG."""
    from geomed_ssl.inference.finetuned import predict_dir
    from geomed_ssl.finetune.segment import finetune_segment
    from geomed_ssl.train.pretrain import pretrain

    raw = {k: dict(v) for k, v in DEMO_RECIPE.items()}
    raw["train"]["max_steps"] = steps
    raw["finetune"]["max_steps"] = finetune_steps
    recipe = recipe_from_dict(raw, "demo recipe")
    # the demo owns its folder: one it made is replaced on each run, any other is refused
    out = prepare_out_dir(out, command="demo", inputs={"bundled sample": SAMPLE_DIR}, overwrite=True)
    log.info("geomed-ssl demo: MAE pretraining on the bundled Indian Pines scene (AVIRIS, 145x145, 200 bands; "
             "CC BY 3.0, Purdue). See geomed_ssl/sample/ATTRIBUTION.txt.")
    start = time.time()
    result = pretrain(recipe, SAMPLE_DIR, out / "pretrain", overwrite=True)
    scores = {}
    for name, encoder in (("pretrained", result.run_dir), ("random init", None)):
        log.info("fine-tuning the %s encoder with %d labelled pixels per class", name, recipe.labels.per_class)
        ft = finetune_segment(recipe, encoder, SAMPLE_DIR, LABELS, out / f"finetune_{name.split()[0]}")
        scores[name] = ft.metrics["test"]
    lines = predict_dir(out / "finetune_pretrained", [SAMPLE_DIR / "indian_pines.tif"], out / "prediction")
    png = save_map_png(out / "prediction" / "indian_pines_pred.tif", out / "prediction" / "indian_pines_pred.png")
    record_entries(png.parent, [png.name])
    minutes = (time.time() - start) / 60
    print(f"\nDemo done in {minutes:.1f} min: {result.steps} pretraining steps, fine-tuned with "
          f"{recipe.labels.per_class} labelled pixels per class, tested on every other labelled pixel.")
    print(f"  {'encoder':12s} {'OA':>6s} {'AA':>6s} {'kappa':>6s}")
    for name, m in scores.items():
        print(f"  {name:12s} {m['OA']:6.3f} {m['AA']:6.3f} {m['kappa']:6.3f}")
    print(f"  encoder:     {result.encoder_dir}   (from geomed_ssl import load_encoder)")
    print(f"  previews:    {result.run_dir / 'previews'}  (input / masked / reconstruction PNGs)")
    print(f"  fine-tuned:  {out / 'finetune_pretrained'}  (metrics.json, confusion.png, model/)")
    print(f"  prediction:  {lines[0].split(' -> ')[-1]}  and  {png}")
    return out


def save_map_png(pred_tif: Path, png: Path) -> Path:
    """The predicted class map beside the ground truth, one colour per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import rasterio

    with rasterio.open(pred_tif) as src:
        pred = src.read(1)
    with rasterio.open(LABELS) as src:
        truth = src.read(1)
    cmap = matplotlib.colormaps["tab20"].resampled(17)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    for ax, arr, title in zip(axes, (truth, pred), ("ground truth (0 = unlabelled)", "prediction")):
        ax.imshow(np.ma.masked_equal(arr, 0) if title.startswith("ground") else arr, cmap=cmap, vmin=0, vmax=16,
                  interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    handles = [matplotlib.patches.Patch(color=cmap(i + 1), label=n) for i, n in enumerate(CLASS_NAMES)]
    fig.legend(handles=handles, loc="center right", fontsize=6, frameon=False)
    fig.subplots_adjust(right=0.78)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return png
