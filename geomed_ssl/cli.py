"""The ``geomed-ssl`` command line: thin commands that parse, load a recipe and call the library.

Shared options and error handling: :mod:`geomed_ssl.cli_options`; the ``finetune`` group:
:mod:`geomed_ssl.cli_finetune`; ``embed``, ``cluster`` and ``similar``: :mod:`geomed_ssl.cli_embeddings`."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from geomed_ssl.cli_embeddings import cluster, embed, similar
from geomed_ssl.cli_finetune import finetune_app
from geomed_ssl.cli_options import (STATE, SetOpt, StrictOpt, drop_filter, ignore_slurm_warning, name_list,
                                    progress_shown, quiet_plain_tiffs, signal_exit_code, terminable, user_errors)
from geomed_ssl.errors import GeomedError

app = typer.Typer(
    help="Self-supervised ViT pretraining and few-label use for remote-sensing rasters and medical volumes.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


@app.callback()
def main(ctx: typer.Context, debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="Less output.")) -> None:
    from geomed_ssl.cpus import fit_threads_to_quota
    from geomed_ssl.launch import further_rank, runs_here, set_alone

    STATE["debug"] = debug
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr,
                        force=True)
    # GDAL reports unreadable files itself; the catalog names them with the reason, so its log lines are noise.
    logging.getLogger("rasterio").setLevel(logging.CRITICAL)
    # so is rasterio's two-line NotGeoreferencedWarning per plain TIFF opened (38-Cloud patches): the catalog and the
    # outputs say such a file is placed nowhere; this one filter goes when the command ends (in-process callers keep
    # theirs, and the filters libraries first imported meanwhile added)
    ctx.call_on_close(functools.partial(drop_filter, quiet_plain_tiffs()))
    command = ctx.invoked_subcommand
    if command == "pretrain" and further_rank():  # rank 0 says the notes and warnings, the same on every rank (the
        package = logging.getLogger("geomed_ssl")  # recipe, the data); the other commands' further ranks say they
        ctx.call_on_close(functools.partial(package.setLevel, package.level))  # exit (below); put back after
        package.setLevel(logging.ERROR)
    if (threads := fit_threads_to_quota()) is not None:
        logging.getLogger("geomed_ssl").info(f"torch threads lowered to {threads}, the CPUs this process may use.")
    ignore_slurm_warning()
    set_alone(False)
    if command not in (None, "pretrain") and not runs_here(f"geomed-ssl {command}"):
        raise typer.Exit(0)  # under torchrun / srun -n N only pretrain trains across ranks; the rest runs in rank 0


@app.command()
@user_errors
@terminable
def inspect(
    data_dir: Path = typer.Argument(..., metavar="DATA_DIR",
                                    help="Folder of GeoTIFFs (.tif) or NIfTI volumes (.nii, .nii.gz)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="Recipe YAML (data section used)."),
    kind: Optional[str] = typer.Option(None, help="raster or volume (default: the recipe's, else guessed)."),
    overrides: Optional[list[str]] = SetOpt,
    strict: bool = StrictOpt,
) -> None:
    """Show what the toolkit sees in a folder (files, bands, wavelengths, grids) and what is wrong with it."""
    from geomed_ssl.config import load_recipe, sets_key
    from geomed_ssl.data.catalog import LABEL_GLOBS, QUALITY_GLOBS, scan
    from geomed_ssl.files.kinds import guess_kind

    sets = list(overrides or [])
    if kind is not None and kind not in ("raster", "volume"):
        raise GeomedError(f"--kind must be raster or volume, got '{kind}'.")
    if kind:
        sets.append(f"data.kind={kind}")
    elif recipe is None:  # guessed: before the --set values, so a data.kind among them wins
        sets.insert(0, f"data.kind={guess_kind(data_dir)}")
    # without a recipe, label maps beside the images are left out as every shipped recipe leaves them out
    labels_apart = recipe is None and data_dir.is_dir() and not sets_key(sets, "data.exclude")
    cfg = load_recipe(recipe, sets + ([f"data.exclude={LABEL_GLOBS + QUALITY_GLOBS}"] if labels_apart else []))
    if recipe is not None:
        from geomed_ssl.methods import resolve_method_settings  # imports torch: only for a recipe's method section

        resolve_method_settings(cfg, str(recipe))  # the same recipe errors as pretrain, before scanning
    catalog = scan(data_dir, cfg.data, strict=strict, names_by_position="error" if strict else "warn")
    typer.echo(catalog.summary())
    found = catalog.excluded if labels_apart else []  # data.exclude is LABEL_GLOBS + QUALITY_GLOBS alone
    if found:
        typer.echo(f"  named like labels or quality masks, not counted as images ({len(found)}): "
                   f"{', '.join(found[:4])}{', ...' if len(found) > 4 else ''} (data.exclude "
                   f"{LABEL_GLOBS + QUALITY_GLOBS}, as the recipes have it; give labels to finetune / compare with "
                   "--labels)")
    from geomed_ssl.data.survey import warn_survey

    chosen = recipe is not None or sets_key(sets, "data.patch_size")  # else sizes nobody chose: cubes
    warn_survey(catalog, cfg.data.spacing, window=cfg.data.patch_size if chosen else None,
                tokens=cfg.model.patch_size if chosen else None, intensity=cfg.data.intensity, flat_bands=True)


@app.command()
@user_errors
@terminable
def pretrain(
    recipe: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML, e.g. recipes/mae_sentinel2.yaml "
                                "(or a bundled recipe's name: mae_sentinel2)."),
    data: Path = typer.Option(..., "--data", help="Folder of unlabeled GeoTIFFs or NIfTI volumes."),
    out: Path = typer.Option(..., "--out", help="Run folder (config, stats, checkpoints, encoder, previews)."),
    overrides: Optional[list[str]] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    strict: bool = StrictOpt,
) -> None:
    """Pretrain a ViT encoder without labels (the method the recipe names) on a folder of rasters or volumes."""
    from geomed_ssl.train.pretrain import pretrain as run

    result = run(recipe, data, out, overrides=overrides, resume=resume, overwrite=overwrite, strict=strict,
                 progress=progress_shown())
    if not result.is_global_zero:  # the other processes of a multi-process run: rank 0 reports
        return
    if result.stopped:  # said once, here (the library logs nothing about it)
        typer.echo(f"stopped at step {result.steps} ({result.stopped}); checkpoint saved: "
                   f"{result.run_dir / 'checkpoints' / 'last.ckpt'}. Continue with the same command and --resume.")
        raise typer.Exit(code=signal_exit_code(result.stopped))
    typer.echo(f"done: {result.steps} steps. Encoder: {result.encoder_dir}  (load with geomed_ssl.load_encoder)")
    previews = result.run_dir / "previews"
    typer.echo(f"metrics: {result.run_dir / 'metrics.csv'}" + (f"  previews: {previews}" if previews.is_dir() else ""))


app.add_typer(finetune_app, name="finetune")


@app.command()
@user_errors
@terminable
def compare(
    encoders: list[str] = typer.Argument(..., metavar="ENC",
                                         help="Encoders: RUN_DIRs, exported encoder folders, fine-tune folders, or "
                                         "none (the first encoder's architecture at random initialisation; always "
                                         "included)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Segmentation: folder of images."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Segmentation: label folder, label file or CSV "
                                          "(as `finetune segment` takes them)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Classification: one subfolder of images per "
                                        "class, or a CSV of image,class rows."),
    out: Path = typer.Option(..., "--out", help="Output folder (results.csv, summary.md, curve.png, selections)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="Recipe YAML (default: the first "
                                          "RUN_DIR's config.yaml)."),
    per_class: Optional[str] = typer.Option(None, "--labels-per-class", help="Budgets: labels per class, e.g. "
                                            "1,2,5,10,20 (the default)."),
    fraction: Optional[str] = typer.Option(None, "--label-fraction", help="Or budgets as fractions of each "
                                           "class's labels, e.g. 0.001,0.01."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Sampling seeds, e.g. 0,1,2."),
    split: str = typer.Option("random", "--split", help="random; blocks (training and test in separate blocks; "
                              "training features never see test blocks); or images (half the images / subjects "
                              "train, the others are only tested: new subjects)."),
    protocol: str = typer.Option("linear,finetune", "--protocol", help="Any of linear, knn, propagate (frozen "
                                 "multi-layer features; propagate spreads the labels over a graph of the images' "
                                 "pixels) and finetune; none is always also fine-tuned."),
    baselines: Optional[str] = typer.Option(None, "--baselines", help="Any of rf, random_conv, band_stats "
                                            "(default: those that apply to the task)."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Run no baseline."),
    overrides: Optional[list[str]] = SetOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again in an existing compare folder (it is "
                                   "otherwise continued: finished rows are skipped)."),
    keep_finetuned: bool = typer.Option(False, "--keep-finetuned", help="Keep each finetune run's FT_DIR in "
                                        "CMP_DIR/finetuned_<encoder>_<budget>_seed<seed> (for predict)."),
    strict: bool = StrictOpt,
) -> None:
    """Label-efficiency curves on your own labelled data: each encoder against random initialisation and
    baselines that need no encoder, at several label budgets and seeds, on the same samples (resumable)."""
    from geomed_ssl.compare.options import parse_options
    from geomed_ssl.compare.report import baseline_lines, paired_lines, spread_label
    from geomed_ssl.compare.run import run_compare

    options = parse_options(encoders, per_class, fraction, seeds, split, protocol, baselines, no_baselines)
    result = run_compare(options, out=out, images=images, labels=labels, data=data, recipe=recipe,
                         overrides=overrides, overwrite=overwrite, strict=strict,
                         progress=progress_shown(), keep_finetuned=keep_finetuned)
    seeds_text = spread_label(sorted({int(r["seed"]) for r in result.rows}))
    typer.echo(f"{result.metric}, {seeds_text} (* best protocol, picked on these test numbers: optimistic):")
    typer.echo(result.table)
    if options.pretrained:
        typer.echo("pretrained − none, paired by seed (95 % t-interval):")
        typer.echo("\n".join(paired_lines(result.rows, result.metric, result.other_architecture)))
    if against := baseline_lines(result.rows, result.metric):
        typer.echo("against the strongest baseline, paired by seed:")
        typer.echo("\n".join(against))
    typer.echo(f"results: {out / 'results.csv'}  summary: {out / 'summary.md'}  curve: {out / 'curve.png'}")


@app.command()
@user_errors
@terminable
def evaluate(
    ft_dir: Path = typer.Argument(..., metavar="FT_DIR", help="A fine-tune output folder."),
    images: Optional[Path] = typer.Option(None, "--images", help="Segmentation: folder of images."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Segmentation: their labels."),
    data: Optional[Path] = typer.Option(None, "--data", help="Classification: one subfolder of images per "
                                        "class, or a CSV of image,class rows."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where metrics.json, confusion.png and images.csv (per "
                                       "image) go (default FT_DIR/eval)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda[:N]."),
    band_names: Optional[str] = typer.Option(None, "--band-names", help="The bands of files without band "
                                             "descriptions, in order, comma-separated (default: the model's "
                                             "data.band_names, else its sensor profile's)."),
    nodata: Optional[float] = typer.Option(None, "--nodata", help="The files' nodata value, replacing their own "
                                           "tags (default: the model's data.nodata, else each file's tag)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="How these labels are coded, when not as the "
                                                  "training's: labels.remap, labels.ignore_value, labels.use_nodata "
                                                  "or labels.label_name = value (repeatable)."),
    strict: bool = StrictOpt,
) -> None:
    """Metrics of a fine-tuned model on labelled data (every labelled pixel, voxel or image)."""
    from geomed_ssl.finetune.evaluate import eval_out_dir, evaluate_dir
    from geomed_ssl.finetune.metrics import format_metrics, written_line

    result = evaluate_dir(ft_dir, images=images, labels=labels, data=data, out=out, device=device, strict=strict,
                          band_names=name_list(band_names, "--band-names"), nodata=nodata, overrides=overrides)
    typer.echo(format_metrics(result["test"], [c["name"] for c in result["classes"]]))
    where = eval_out_dir(ft_dir, out)
    typer.echo(written_line(where))


@app.command()
@user_errors
@terminable
def predict(
    ft_dir: Path = typer.Argument(..., metavar="FT_DIR",
                                  help="A fine-tune output folder (segmentation or classification)."),
    inputs: list[Path] = typer.Argument(..., metavar="INPUT", help="GeoTIFF / NIfTI files or folders of them."),
    out: Path = typer.Option(..., "--out", help="Output folder: <name>_pred.tif / <name>_pred.nii.gz."),
    # 0.25 = windows.tiling.DEFAULT_OVERLAP (imported lazily, as the whole stack is)
    overlap: float = typer.Option(0.25, "--overlap", help="Window overlap fraction in [0, 1)."),
    blend: str = typer.Option("gaussian", "--blend", help="gaussian or linear (constant for plain averaging)."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write per-class probabilities."),
    probabilities_dtype: Optional[str] = typer.Option(None, "--probabilities-dtype", help="float32 (default) or "
                                                      "uint8: round(p*254), a quarter of the size; implies "
                                                      "--probabilities."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda[:N]."),
    band_names: Optional[str] = typer.Option(None, "--band-names", help="The bands of files without band "
                                             "descriptions, in order, comma-separated (default: the model's "
                                             "data.band_names, else its sensor profile's)."),
    nodata: Optional[float] = typer.Option(None, "--nodata", help="The inputs' nodata value, replacing their own "
                                           "tags (default: the model's data.nodata, else each file's tag)."),
    resume: bool = typer.Option(False, "--resume", help="Keep the class maps an earlier predict into OUT_DIR "
                                "finished with this model, these settings and unchanged inputs; predict the rest."),
    strict: bool = StrictOpt,
) -> None:
    """Predict whole scenes / volumes with sliding windows into georeferenced GeoTIFF / NIfTI class maps."""
    from geomed_ssl.inference.finetuned import predict_dir

    proba: bool | str = probabilities_dtype or probabilities  # proba_kind refuses any other dtype in one line
    for line in predict_dir(ft_dir, inputs, out, overlap=overlap, blend=blend, probabilities=proba,
                            batch_size=batch_size, device=device, strict=strict,
                            band_names=name_list(band_names, "--band-names"), nodata=nodata, resume=resume):
        typer.echo(line)


@app.command()
@user_errors
@terminable
def attention(
    encoder: Path = typer.Argument(..., metavar="ENCODER", help="RUN_DIR, RUN_DIR/encoder or a fine-tune folder."),
    image: Path = typer.Argument(..., metavar="IMAGE", help="A GeoTIFF or NIfTI file with the encoder's bands."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    window: Optional[str] = typer.Option(None, "--window", help="ROW,COL: top-left pixel of the raster window "
                                         "(default: the centre window of the encoder's size)."),
    strict: bool = StrictOpt,
) -> None:
    """Per-head CLS attention of the encoder's last block over one window (rasters) or centre patch (volumes),
    beside a false-colour view of it (DINO's "heads look at objects"; any encoder works)."""
    from geomed_ssl.viz.attention import attention_for_file

    offsets = None
    if window is not None:
        try:
            offsets = [int(v) for v in window.split(",")]
        except ValueError:
            offsets = []
        if len(offsets) != 2:
            raise GeomedError(f"--window '{window}': expected ROW,COL, e.g. --window 0,0 for the top-left window.")
    path = attention_for_file(encoder, image, out, window=offsets, strict=strict)
    typer.echo(f"attention maps: {path}")


app.command()(embed)  # the embedding commands (geomed_ssl.cli_embeddings), here to keep --help's order
app.command()(cluster)
app.command()(similar)


@app.command()
@user_errors
@terminable
def export(
    encoder: Path = typer.Argument(..., metavar="ENC", help="RUN_DIR, RUN_DIR/encoder or a fine-tune folder."),
    fmt: str = typer.Option("timm", "--format", help="timm: a VisionTransformer state dict and its create_model "
                            "arguments (plain-embedding 2D encoders)."),
    out: Path = typer.Option(..., "--out", help="Export folder (model.safetensors, config.json, geomed_ssl.json, "
                             "README.txt)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing export folder."),
) -> None:
    """Export a pretrained encoder for another library (timm), with its band names and normalisation statistics."""
    from geomed_ssl.export import export as run

    folder = run(encoder, out, fmt=fmt, overwrite=overwrite)
    typer.echo(f"{fmt} export: {folder}  (how to load it: {folder / 'README.txt'})")


@app.command()
@user_errors
def methods(
    names: Optional[list[str]] = typer.Argument(None, metavar="NAME", help="Methods to show (default: all)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print docs/methods.md (every method in one table, "
                                  "then each one's settings)."),
) -> None:
    """List the self-supervised methods: what each learns, the views it needs, its cost, failure modes, recipes and
    settings (defaults and meaning)."""
    import geomed_ssl.methods  # noqa: F401  (registers the methods)
    from geomed_ssl.methods.catalog import methods_markdown, methods_text

    if markdown and names:
        raise GeomedError("--markdown prints the whole of docs/methods.md; give method names without it.")
    typer.echo(methods_markdown() if markdown else methods_text(names), nl=False)


@app.command()
@user_errors
@terminable
def demo(
    out: Path = typer.Option(Path("geomed-ssl-demo"), "--out", help="Demo folder (replaced on each run)."),
    steps: int = typer.Option(300, "--steps", help="Pretraining steps."),
    finetune_steps: int = typer.Option(150, "--finetune-steps", help="Fine-tuning steps of random init."),
    per_class: str = typer.Option("2,5", "--labels-per-class", help="Label budgets of the comparison, e.g. 2,5."),
    seeds: str = typer.Option("0", "--seeds", help="Label sampling seeds of the comparison, e.g. 0,1."),
) -> None:
    """Pretrain the dense hyperspectral configuration on the bundled Indian Pines scene (AVIRIS, 200 bands), compare
    it with random init and a random forest on the same few labelled pixels, print which wins, and write the curve
    and the predicted map; a few minutes on 2 CPU cores. A stop during pretraining (Ctrl-C, SIGTERM) ends it there."""
    from geomed_ssl.compare.options import parse_budgets, parse_seeds
    from geomed_ssl.demo import DemoStopped, run_demo

    budgets = tuple(int(b.per_class) for b in parse_budgets(per_class, None))  # type: ignore[arg-type]
    try:
        run_demo(out, steps=steps, finetune_steps=finetune_steps, labels_per_class=budgets,
                 seeds=tuple(parse_seeds(seeds)))
    except DemoStopped as stop:
        typer.echo(f"demo {stop}.", err=True)
        raise typer.Exit(code=signal_exit_code(stop.signal)) from None


def run() -> None:
    """The console script: the app; once it has returned (or failed), a Ctrl-C while Python shuts down (libraries'
    exit hooks: data-loader workers joined, logs flushed) ends the process at once with 130 and no word, where it
    printed a KeyboardInterrupt traceback from inside those hooks after the command had finished."""
    import os
    import signal

    def leave(*_: object) -> None:
        for stream in (sys.stdout, sys.stderr):  # what the command printed last is not lost with the exit
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a stream in the middle of a write, or closed
                pass
        os._exit(130)

    try:
        app()
    finally:
        try:
            signal.signal(signal.SIGINT, leave)
        except ValueError:  # not the main thread
            pass


if __name__ == "__main__":
    run()
