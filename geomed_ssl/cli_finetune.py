"""``geomed-ssl finetune segment`` and ``geomed-ssl finetune classify``: few-label fine-tuning commands (the
``finetune`` group of :mod:`geomed_ssl.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from geomed_ssl.cli_options import SetOpt, StrictOpt, progress_shown, terminable, user_errors
from geomed_ssl.errors import GeomedError

finetune_app = typer.Typer(help="Fine-tune a pretrained encoder with few labels.", no_args_is_help=True)


def finetune_sets(overrides: Optional[list[str]], per_class: Optional[int], fraction: Optional[float],
                  **flags: Any) -> list[str]:
    """CLI flags are aliases of --set keys, given before the explicit --set values; a --set of a key a flag sets,
    to another value, is refused (``--full --set finetune.freeze_encoder=true`` would silently train a probe)."""
    from geomed_ssl.config.loading import parse_override

    sets: list[str] = []
    if per_class is not None:
        sets.append(f"labels.per_class={per_class}")
    if fraction is not None:
        sets.append(f"labels.fraction={fraction}")
    for key, value in flags.items():
        if value is not None:
            sets.append(f"{key}={value}")
    flagged = {f"{s}.{k}": v for s, k, v in map(parse_override, sets)}
    for text in overrides or []:
        section, key, value = parse_override(text)
        if f"{section}.{key}" in flagged and value != flagged[f"{section}.{key}"]:
            raise GeomedError(f"--set '{text}' contradicts the option that sets {section}.{key}="
                              f"{str(flagged[f'{section}.{key}']).lower()}; give one of them.")
    return sets + list(overrides or [])


@finetune_app.command("segment")
@user_errors
@terminable
def finetune_segment_cmd(
    recipe: Path = typer.Argument(..., metavar="RECIPE",
                                  help="Recipe YAML (a pretraining recipe plus finetune/labels sections)."),
    encoder: str = typer.Option(..., "--encoder", help="RUN_DIR, RUN_DIR/encoder, a fine-tune folder, or 'none' "
                                "(random init baseline)."),
    images: Path = typer.Option(..., "--images", help="Folder of images (GeoTIFF or NIfTI)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Folder of label files named like the images, one "
                                          "label file, or a CSV of image,label (or set labels.label_name)."),
    out: Path = typer.Option(..., "--out", help="Output folder (model, metrics, labels used)."),
    per_class: Optional[int] = typer.Option(None, "--labels-per-class", help="k labelled pixels/voxels per class."),
    fraction: Optional[float] = typer.Option(None, "--label-fraction", help="Fraction of labelled pixels used."),
    freeze: bool = typer.Option(False, "--freeze-encoder", help="Train the decoder only."),
    unfreeze_after: Optional[int] = typer.Option(None, "--unfreeze-after", help="Freeze the encoder for N steps "
                                                 "(0: a full fine-tune)."),
    head: Optional[str] = typer.Option(None, "--head", help="unetr (decoder with a skip from the pixels), "
                                       "linear (1x1 conv on the encoder's upsampled tokens) or probe (a "
                                       "classifier on frozen features: finetune.probe)."),
    overrides: Optional[list[str]] = SetOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    strict: bool = StrictOpt,
) -> None:
    """Segmentation on the ViT encoder (UNETR-style decoder or linear head) from a few labelled pixels or voxels."""
    from geomed_ssl.finetune.segment import finetune_segment
    from geomed_ssl.finetune.metrics import format_metrics, written_line

    flags = {"finetune.freeze_encoder": "true" if (freeze or unfreeze_after) else None,
             "finetune.unfreeze_after_steps": unfreeze_after, "finetune.head": head}
    sets = finetune_sets(overrides, per_class, fraction, **{"finetune.task": "segment", **flags})
    result = finetune_segment(recipe, encoder, images, labels, out, overrides=sets, overwrite=overwrite, strict=strict,
                              progress=progress_shown())
    names = [c["name"] for c in result.metrics["classes"]]
    typer.echo(format_metrics(result.metrics["test"], names))
    typer.echo(written_line(out, model=True))


@finetune_app.command("classify")
@user_errors
@terminable
def finetune_classify_cmd(
    recipe: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML."),
    encoder: str = typer.Option(..., "--encoder", help="RUN_DIR, RUN_DIR/encoder, a fine-tune folder, or 'none' "
                                "(random init baseline)."),
    data: Path = typer.Option(..., "--data", help="Folder with one subfolder of images per class, or a "
                              "CSV of image,class rows (image paths absolute, or relative to the CSV's or the "
                              "working folder)."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    per_class: Optional[int] = typer.Option(None, "--labels-per-class", help="k labelled images per class."),
    fraction: Optional[float] = typer.Option(None, "--label-fraction", help="Fraction of images used for training."),
    linear_probe: bool = typer.Option(False, "--linear-probe", help="Frozen encoder, BatchNorm + linear head."),
    mlp: bool = typer.Option(False, "--mlp", help="Frozen encoder, MLP head."),
    full: bool = typer.Option(False, "--full", help="Fine-tune encoder and linear head together."),
    overrides: Optional[list[str]] = SetOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    strict: bool = StrictOpt,
) -> None:
    """Image classification from k labelled images per class (class folders such as EuroSAT, or a classes CSV)."""
    from geomed_ssl.finetune.classify import finetune_classify
    from geomed_ssl.finetune.metrics import format_metrics, written_line

    if linear_probe + mlp + full > 1:
        raise GeomedError("choose one of --linear-probe, --mlp and --full.")
    mode = {"finetune.head": "mlp" if mlp else "linear",
            "finetune.freeze_encoder": "false" if full else "true"} if (linear_probe or mlp or full) else {}
    sets = finetune_sets(overrides, per_class, fraction, **{"finetune.task": "classify", **mode})
    result = finetune_classify(recipe, encoder, data, out, overrides=sets, overwrite=overwrite, strict=strict,
                               progress=progress_shown())
    names = [c["name"] for c in result.metrics["classes"]]
    typer.echo(format_metrics(result.metrics["test"], names))
    typer.echo(written_line(out, model=True))
