"""The ``geomed-ssl`` command line: thin commands that parse, load a recipe and call the library."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from geomed_ssl.errors import GeomedError

app = typer.Typer(
    help="Self-supervised ViT pretraining and few-label use for remote-sensing rasters and medical volumes.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
STATE: dict[str, Any] = {"debug": False}

SetOpt = typer.Option(None, "--set", help="Override a recipe key: section.key=value (repeatable).")


def user_errors(fn: Callable) -> Callable:
    """Print a GeomedError as one line and exit 2; show the traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GeomedError as err:
            if STATE["debug"]:
                raise
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="Less output.")) -> None:
    STATE["debug"] = debug
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr,
                        force=True)
    # GDAL reports unreadable files itself; the catalog names them with the reason, so its log lines are noise.
    logging.getLogger("rasterio").setLevel(logging.CRITICAL)


@app.command()
@user_errors
def inspect(
    data_dir: Path = typer.Argument(..., help="Folder of GeoTIFFs (.tif) or NIfTI volumes (.nii, .nii.gz)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="Recipe YAML (data section used)."),
    kind: Optional[str] = typer.Option(None, help="raster or volume (default: the recipe's, else guessed)."),
    overrides: Optional[list[str]] = SetOpt,
    strict: bool = typer.Option(False, "--strict", help="Exit with an error when any file has a problem."),
) -> None:
    """Show what the toolkit sees in a folder (files, bands, wavelengths, grids) and what is wrong with it."""
    from geomed_ssl.config import load_recipe
    from geomed_ssl.data.catalog import scan

    sets = list(overrides or [])
    if kind is None and recipe is None:
        kind = guess_kind(data_dir)
    if kind:
        sets.append(f"data.kind={kind}")
    cfg = load_recipe(recipe, sets)
    catalog = scan(data_dir, cfg.data, strict=strict)
    typer.echo(catalog.summary())


def guess_kind(data_dir: Path) -> str:
    """volume when the folder holds NIfTI files and no GeoTIFF, else raster."""
    if not data_dir.is_dir():
        raise GeomedError(f"data folder '{data_dir}' does not exist.")
    has_nii = any(data_dir.rglob("*.nii*"))
    has_tif = any(data_dir.rglob("*.tif")) or any(data_dir.rglob("*.tiff"))
    return "volume" if has_nii and not has_tif else "raster"


@app.command()
@user_errors
def pretrain(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/mae_sentinel2.yaml."),
    data: Path = typer.Option(..., "--data", help="Folder of unlabeled GeoTIFFs or NIfTI volumes."),
    out: Path = typer.Option(..., "--out", help="Run folder (config, stats, checkpoints, encoder, previews)."),
    overrides: Optional[list[str]] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    strict: bool = typer.Option(False, "--strict", help="Fail when any input file has a problem (default: skip it)."),
) -> None:
    """Pretrain a ViT encoder without labels (MAE) on a folder of rasters or volumes."""
    from geomed_ssl.train.pretrain import pretrain as run

    result = run(recipe, data, out, overrides=overrides, resume=resume, overwrite=overwrite, strict=strict)
    typer.echo(f"done: {result.steps} steps. Encoder: {result.encoder_dir}  (load with geomed_ssl.load_encoder)")
    typer.echo(f"metrics: {result.run_dir / 'metrics.csv'}  previews: {result.run_dir / 'previews'}")


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("geomed-ssl-demo"), "--out", help="Demo folder (replaced on each run)."),
    steps: int = typer.Option(150, "--steps", help="Pretraining steps."),
) -> None:
    """Pretrain a small MAE on the bundled Indian Pines scene (AVIRIS, 200 bands) in a few minutes on a CPU."""
    from geomed_ssl.demo import run_demo

    run_demo(out, steps=steps)


if __name__ == "__main__":
    app()
