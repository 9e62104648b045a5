"""Few-label quality: Indian Pines segmentation and EuroSAT-MS classification, pretrained vs random init.

    python benchmarks/bench_fewlabel.py [--seeds 0 1 2] [--pretrain-steps 400] [--finetune-steps 200] [--skip-eurosat]
        [--seg-head linear|unetr] [--num-workers 0]
        [--brats [--brats-pretrain-steps 2000] [--brats-split test|validation] [--brats-loss ce|ce+dice|dice]]

Hyperparameters are fixed here and are the same for the pretrained and the random-init encoder; nothing early-stops
on the test split. One disclosure: the Indian Pines head (linear rather than UNETR) was chosen after the UNETR
numbers on seeds 0-2 were known, by comparing heads on label seeds 10 and 11 only. Indian Pines: the bundled scene,
k labelled pixels per class (rare classes capped at half their pixels), tested on every other labelled pixel (random
split) or on whole held-out 16x16 blocks (block split, no leakage through neighbouring pixels). The classical
baseline is a random forest on PCA + local-mean spectral features with exactly the same training pixels. EuroSAT-MS:
200 patches, linear probe and full fine-tune with k images per class, tested on the rest. BraTS (``--brats``,
optional 3D): FLAIR + T1c at 2 mm, MAE on the four non-test patients, then whole-tumour segmentation (classes 1-4
merged, background a class) from 1 % of the voxels of the 2 training patients (150 steps: a 64³ UNETR step costs
~1-4 s on 2 CPU cores), scored on the 2 test patients (``--brats-split validation``: on the 2 validation patients,
which is how the pretraining length and the fine-tune loss were chosen, with label seeds 10 and 11). Its classical
baseline: ``compare``'s rf features (PCA + 7x7x7 local means, 200 trees, balanced) on exactly the fine-tunes'
training voxels.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from geomed_ssl.config import recipe_from_dict
from geomed_ssl.demo import DEMO_RECIPE
from geomed_ssl.labels import LabelSelection
from geomed_ssl.finetune.segment import finetune_segment
from geomed_ssl.sample import IMAGE, LABELS, SAMPLE_DIR
from geomed_ssl.train.pretrain import pretrain

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EUROSAT_BANDS = "[B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A]"


def recipe(**sections: dict) -> object:
    raw = {k: dict(v) for k, v in DEMO_RECIPE.items()}
    for name, values in sections.items():
        raw[name].update(values)
    return recipe_from_dict(raw, "benchmark recipe")


def mean_std(runs: list[dict], keys: tuple[str, ...]) -> list[tuple[float, float]]:
    """(mean, std) over runs of each metric in ``keys``."""
    return [(float(np.mean([m[k] for m in runs])), float(np.std([m[k] for m in runs]))) for k in keys]


def print_table(columns: tuple[str, str, str], rows: list[tuple]) -> None:
    """A markdown table: setting, model, then ``columns`` as mean ± std."""
    heads = " | ".join(f"{c:>13s}" for c in columns)
    print(f"\n| {'setting':38s} | {'model':22s} | {heads} |")
    print(f"|{'-' * 40}|{'-' * 24}|{'-' * 15}|{'-' * 15}|{'-' * 15}|")
    for setting, name, *vals in rows:
        cells = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in vals)
        print(f"| {setting:38s} | {name:22s} | {cells} |")


def rf_baseline(selection: LabelSelection, seed: int) -> dict[str, float]:
    """Random forest on 30 PCA components + their 5x5 local means, trained on the same pixels."""
    import rasterio
    from scipy.ndimage import uniform_filter
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier

    from geomed_ssl.finetune.metrics import classification_metrics, confusion_matrix

    with rasterio.open(IMAGE) as src:
        cube = src.read().astype(np.float32)  # (200, H, W)
    c, h, w = cube.shape
    flat = cube.reshape(c, -1).T
    flat = (flat - flat.mean(0)) / (flat.std(0) + 1e-6)
    pcs = PCA(30, random_state=seed).fit_transform(flat).T.reshape(30, h, w)
    local = np.stack([uniform_filter(p, 5, mode="reflect") for p in pcs])
    feats = np.concatenate([pcs, local]).reshape(60, -1).T
    cmap = selection.class_map
    rf = RandomForestClassifier(300, random_state=seed, n_jobs=2)
    rf.fit(feats[selection.train_index], cmap.encode(selection.train_value))
    pred = rf.predict(feats[selection.test_index])
    m = classification_metrics(confusion_matrix(cmap.encode(selection.test_value), pred, len(cmap)))
    return {k: m[k] for k in ("OA", "AA", "kappa")}


def indian_pines(args: argparse.Namespace, tmp: Path) -> list[tuple]:
    t0 = time.time()
    ft = {"max_steps": args.finetune_steps, "head": args.seg_head}
    base = recipe(train={"max_steps": args.pretrain_steps}, finetune=ft, data={"num_workers": args.num_workers})
    run = pretrain(base, SAMPLE_DIR, tmp / "pretrain", overwrite=True, progress=False)
    pre_minutes = (time.time() - t0) / 60
    rows = []
    settings = [(5, "random"), (10, "random"), (5, "blocks")]
    for k, split in settings:
        results: dict[str, list[dict]] = {"pretrained": [], "random init": [], "RF (PCA + local mean)": []}
        for seed in args.seeds:
            r = recipe(train={"max_steps": args.pretrain_steps}, finetune=ft, data={"num_workers": args.num_workers},
                       labels={"per_class": k, "split": split, "seed": seed, "block_size": 16})
            for name, enc in (("pretrained", run.run_dir), ("random init", None)):
                out = tmp / f"ft_{k}_{split}_{seed}_{name.split()[0]}"
                res = finetune_segment(r, enc, SAMPLE_DIR, LABELS, out, overwrite=True, progress=False)
                results[name].append(res.metrics["test"])
                selection = res.selection
            results["RF (PCA + local mean)"].append(rf_baseline(selection, seed))
        for name, ms in results.items():
            rows.append((f"Indian Pines, {k}/class, {split} split", name, *mean_std(ms, ("OA", "AA", "kappa"))))
    print(f"\nIndian Pines: pretraining {args.pretrain_steps} steps took {pre_minutes:.1f} min; fine-tuning "
          f"{args.finetune_steps} steps per run, head '{args.seg_head}'; seeds {args.seeds}")
    return rows


def eurosat(args: argparse.Namespace, tmp: Path) -> list[tuple]:
    from geomed_ssl.finetune.classify import finetune_classify

    data = SHARED / "eurosat_ms_200"
    if not data.is_dir():
        print("EuroSAT-MS sample not present; skipped")
        return []
    eu = {"data": {"kind": "raster", "patch_size": 32, "band_names": None, "include": ["**/*"], "num_workers": 0,
                   "stats_windows": 128},
          "model": {"embedding": "plain", "patch_size": 8, "embed_dim": 128, "depth": 6, "num_heads": 4},
          "method": {"name": "mae", "decoder_embed_dim": 64, "decoder_depth": 2, "decoder_num_heads": 4},
          "train": {"batch_size": 32, "max_steps": args.pretrain_steps, "base_lr": 1.5e-3, "warmup_steps": 20,
                    "checkpoint_every": 10_000, "preview_every": 0, "log_every": 10}}
    import yaml

    bands = yaml.safe_load(EUROSAT_BANDS)
    eu["data"]["band_names"] = bands
    t0 = time.time()
    run = pretrain(recipe_from_dict(eu), data, tmp / "eu_pretrain", overwrite=True, progress=False)
    minutes = (time.time() - t0) / 60
    rows = []
    for k in (5, 10):
        for mode, ft in (("linear probe", {"head": "linear", "freeze_encoder": True, "max_steps": 300,
                                           "base_lr": 1e-2}),
                         ("full fine-tune", {"head": "linear", "freeze_encoder": False,
                                             "max_steps": args.finetune_steps, "batch_size": 16, "base_lr": 1e-3})):
            for name, enc in (("pretrained", run.run_dir), ("random init", None)):
                accs = []
                for seed in args.seeds:
                    r = recipe_from_dict({**eu, "finetune": {"task": "classify", **ft},
                                          "labels": {"per_class": k, "seed": seed}})
                    res = finetune_classify(r, enc, data, tmp / f"eu_{k}_{mode[:4]}_{name[:4]}_{seed}",
                                            overwrite=True, progress=False)
                    accs.append(res.metrics["test"])
                rows.append((f"EuroSAT-MS, {k}/class, {mode}", name, *mean_std(accs, ("OA", "AA", "kappa"))))
    print(f"EuroSAT-MS: MAE pretraining {args.pretrain_steps} steps on the 200 patches took {minutes:.1f} min")
    return rows


def brats_rf(ft_dir: Path, train: Path, scored: Path) -> dict[str, float]:
    """The ``compare`` rf baseline's features (PCA of the channels plus their 7x7x7 local means; 200 trees, balanced
    classes) trained on exactly the fine-tune's training voxels (its ``labels_used.npz``), read as the fine-tune read
    them; OA and Dice on every voxel of the ``scored`` patients."""
    from sklearn.ensemble import RandomForestClassifier

    from geomed_ssl.compare.baselines import RF_TREES, rf_points
    from geomed_ssl.config import load_recipe
    from geomed_ssl.data.catalog import scan
    from geomed_ssl.data.readers import VolumeReader
    from geomed_ssl.data.stats import compute_stats
    from geomed_ssl.labels import read_label_pairs
    from geomed_ssl.finetune.metrics import classification_metrics, confusion_matrix
    from geomed_ssl.models.probe import read_image

    cfg = load_recipe(ft_dir / "config.yaml")
    reader = VolumeReader(cfg.data, max_cached=1)

    def volumes(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray], object]:
        catalog = scan(folder, cfg.data)
        pairs, labels, _ = read_label_pairs(catalog.records, None, cfg.labels, cfg.data)
        return [r for r, _ in pairs], labels, catalog

    train_recs, train_labels, train_catalog = volumes(train)
    scored_recs, scored_labels, _ = volumes(scored)
    stats = compute_stats(train_catalog, cfg.data, seed=0)
    train_img = [read_image(r, stats, cfg.data, 3, reader) for r in train_recs]
    pixels = np.concatenate([im.reshape(im.shape[0], -1).T for im in train_img]).astype(np.float64)
    mean = pixels.mean(axis=0)
    comps = np.linalg.svd(pixels - mean, full_matrices=False)[2]
    features = rf_points(mean.astype(np.float32), comps.astype(np.float32))  # compare's rf features at points

    def at(im: np.ndarray, flat: np.ndarray) -> np.ndarray:
        return features(im, np.stack(np.unravel_index(flat, im.shape[1:]), axis=1), None)

    used = np.load(ft_dir / "labels_used.npz")
    x = np.concatenate([at(im, used["train_index"][used["train_file"] == f]) for f, im in enumerate(train_img)])
    y = np.concatenate([used["train_value"][used["train_file"] == f] for f in range(len(train_img))])
    forest = RandomForestClassifier(RF_TREES, class_weight="balanced", n_jobs=1, random_state=0).fit(x, y)
    scored_img = [read_image(r, stats, cfg.data, 3, reader) for r in scored_recs]
    pred = np.concatenate([forest.predict(at(im, np.arange(im[0].size))) for im in scored_img])
    truth = np.concatenate([a.reshape(-1) for a in scored_labels])
    m = classification_metrics(confusion_matrix(truth, pred, 2))
    return {"OA": m["OA"], "Dice (tumour)": m["per_class_dice"][1], "mean Dice": m["mean_dice"]}


BRATS = SHARED / "brats_subset"
MRI_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mae_mri.yaml"
BRATS_MODEL = ["data.channels=[*Flair*,*T1c*]", "data.spacing=[2,2,2]", "data.patch_size=64", "model.patch_size=16",
               "model.embed_dim=96", "model.depth=4", "model.num_heads=4", "method.decoder_embed_dim=64",
               "method.decoder_depth=2", "method.decoder_num_heads=4"]


def brats_pretrain(out: Path, steps: int, held_out: str, num_workers: int = 0) -> Path:
    """The BraTS MAE on every patient outside the ``held_out`` folder (test, validation or train)."""
    run = pretrain(str(MRI_RECIPE), BRATS, out, overwrite=True, progress=False, overrides=[
        *BRATS_MODEL, f"data.num_workers={num_workers}",
        f"data.exclude=[{held_out}/**,*OTMultiClass*,*mask*,*License*]", "train.batch_size=4",
        f"train.max_steps={steps}", "train.base_lr=1.5e-3", f"train.warmup_steps={max(20, steps // 10)}",
        "train.checkpoint_every=100000", "train.preview_every=0"])
    return run.run_dir


def brats_finetune(encoder: Path | None, fit: str, scored: str, out: Path, seed: int, loss: str = "ce",
                   num_workers: int = 0) -> dict[str, float]:
    """Whole tumour from 1 % of the voxels of the patients in ``fit`` (150 steps, UNETR), scored on ``scored``."""
    from geomed_ssl.finetune.evaluate import evaluate_dir

    finetune_segment(str(MRI_RECIPE), encoder, BRATS / fit, None, out, overwrite=True, progress=False, overrides=[
        *BRATS_MODEL, f"data.num_workers={num_workers}", "labels.label_name=OTMultiClass.nii.gz",
        "labels.remap={2: 1, 3: 1, 4: 1}", "labels.ignore_value=null", "labels.fraction=0.01",
        "finetune.max_steps=150", "finetune.batch_size=2", "finetune.base_lr=1e-3", "finetune.warmup_steps=15",
        f"finetune.loss={loss}", "finetune.feature_size=8", f"labels.seed={seed}", f"train.seed={seed}"])
    m = evaluate_dir(out, images=BRATS / scored)["test"]
    return {"OA": m["OA"], "Dice (tumour)": m["per_class_dice"][1], "mean Dice": m["mean_dice"]}


def brats(args: argparse.Namespace, tmp: Path) -> list[tuple]:
    if not BRATS.is_dir():
        print("BraTS subset not present; skipped")
        return []
    t0 = time.time()
    run = brats_pretrain(tmp / "brats_pre", args.brats_pretrain_steps, "test", args.num_workers)
    minutes = (time.time() - t0) / 60
    scores: dict[str, list[dict]] = {"pretrained": [], "random init": [], "random forest": []}
    for seed in args.seeds:
        for name, enc in (("pretrained", run), ("random init", None)):
            out = tmp / f"brats_ft_{name.split()[0]}_{seed}"
            scores[name].append(brats_finetune(enc, "train", args.brats_split, out, seed, args.brats_loss,
                                               args.num_workers))
        scores["random forest"].append(brats_rf(out, BRATS / "train", BRATS / args.brats_split))  # the same voxels
    print(f"BraTS: MAE pretraining {args.brats_pretrain_steps} steps on 4 patients took {minutes:.1f} min; "
          f"fine-tuning 150 steps (UNETR, feature size 8, {args.brats_loss}) from 1 % of 2 patients' voxels; "
          f"scored on 2 {args.brats_split} patients")
    task = f"BraTS whole tumour, 2 train / 2 {args.brats_split}"
    return [(task, name, *mean_std(ms, ("OA", "Dice (tumour)", "mean Dice"))) for name, ms in scores.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--finetune-steps", type=int, default=200)
    ap.add_argument("--skip-eurosat", action="store_true")
    ap.add_argument("--skip-indian-pines", action="store_true")
    ap.add_argument("--brats", action="store_true", help="also run the optional 3D BraTS comparison")
    ap.add_argument("--brats-pretrain-steps", type=int, default=2000)
    ap.add_argument("--brats-split", default="test", choices=("test", "validation"),
                    help="score on the 2 test patients, or on the 2 validation patients (for choosing settings)")
    ap.add_argument("--brats-loss", default="ce", choices=("ce", "ce+dice", "dice"), help="BraTS fine-tune loss")
    ap.add_argument("--seg-head", default="linear", help="Indian Pines segmentation head: linear or unetr")
    ap.add_argument("--num-workers", type=int, default=0, help="data.num_workers (0 is fastest on 2 CPU cores)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_indian_pines:
            rows += indian_pines(args, Path(tmp))
        if not args.skip_eurosat:
            rows += eurosat(args, Path(tmp))
        brats_rows = brats(args, Path(tmp)) if args.brats else []
    print_table(("OA", "AA", "kappa"), rows)
    if brats_rows:
        print_table(("OA", "Dice, tumour", "mean Dice"), brats_rows)


if __name__ == "__main__":
    main()
