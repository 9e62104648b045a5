"""The output-folder rule: manifests, what --overwrite may delete, earlier versions' folders, inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geomed_ssl.errors import OutputError
from geomed_ssl.outdirs import MANIFEST, check_out_dir, foreign_inside, owner, prepare_out_file, read_manifest
from geomed_ssl.outdirs import prepare_out_dir as prepare_and_lock
from geomed_ssl.outlocks import released_after
from tests.test_bad_input import made_by_older_version


def prepare_out_dir(*args, **kwargs) -> Path:
    """The folder as a command leaves it once it returns: prepared, then its lock let go."""
    with released_after():
        return prepare_and_lock(*args, **kwargs)


def fill(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_text(name)


def our_checkpoint(path: Path) -> None:
    """A checkpoint as pretraining writes it: our section in it (a checkpoint is ours by its contents)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "geomed_ssl": {"method": "mae"}}, path)


def tagged_map(path: Path) -> None:
    """A one-pixel GeoTIFF with the provenance tags embed's and cluster's maps carry."""
    import rasterio

    from geomed_ssl.outcommands import provenance_tags

    with rasterio.open(path, "w", driver="GTiff", height=1, width=1, count=1, dtype="int16") as dst:
        dst.update_tags(**provenance_tags("/data/a.tif"))


def test_a_new_folder_gets_a_manifest_naming_the_command_and_its_entries(tmp_path: Path) -> None:
    out = prepare_out_dir(tmp_path / "a" / "run", command="pretrain")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["tool"] == "geomed-ssl" and manifest["command"] == "pretrain" and manifest["version"]
    assert manifest["created"].endswith("+00:00")
    assert {"config.yaml", "checkpoints", "encoder"} <= set(manifest["entries"])
    assert [p.name for p in out.iterdir()] == [MANIFEST]


def test_overwrite_replaces_a_folder_of_ours(tmp_path: Path) -> None:
    out = prepare_out_dir(tmp_path / "cl", command="cluster")
    fill(out, "summary.json", "clusters.csv", ".partial-1.0a1b2c3d-scatter.png")
    (out / "maps").mkdir()
    tagged_map(out / "maps" / "a_clusters.tif")  # a map is ours by what it says it was made from
    with pytest.raises(OutputError, match=r"pass --overwrite \(overwrite=True\) to replace it"):  # Python names too
        prepare_out_dir(out, command="cluster")
    prepare_out_dir(out, command="cluster", overwrite=True)
    assert [p.name for p in out.iterdir()] == [MANIFEST]



def test_a_folder_a_killed_first_run_made_is_taken_again_without_what_its_writers_left(tmp_path: Path) -> None:
    """A first evaluate / similar killed while writing leaves its manifest and a temporary file: the next run
    creates the folder as new and deletes the dead writer's file, which would otherwise stay until a third run."""
    from geomed_ssl.outfiles import host_tag

    out = prepare_out_dir(tmp_path / "ev", command="evaluate")
    fill(out, f".partial-999999.{host_tag()}-confusion.png")  # a writer on this machine that is gone
    prepare_out_dir(out, command="evaluate")
    assert [p.name for p in out.iterdir()] == [MANIFEST]


def test_overwrite_deletes_what_killed_writers_left_and_names_backup_like_files(tmp_path: Path) -> None:
    out = prepare_out_dir(tmp_path / "run", command="pretrain")
    fill(out, "metrics.csv", ".partial-4242.0a1b2c3d-metrics.csv", ".partial-4242.0a1b2c3d-stats.json")
    (out / ".partial-4242.0a1b2c3d-encoder").mkdir()  # an encoder export swapped in by a killed run
    (out / ".replaced-4242.0a1b2c3d-encoder").mkdir()
    assert not owner(out).foreign  # type: ignore[union-attr]
    fill(out, "metrics.csv.tmp")  # a backup-like name: a development version's leftover, or the user's copy
    with pytest.raises(OutputError, match="also holds 'metrics.csv.tmp'"):
        prepare_out_dir(out, command="pretrain", overwrite=True)
    (out / "metrics.csv.tmp").unlink()
    prepare_out_dir(out, command="pretrain", overwrite=True)
    assert [p.name for p in out.iterdir()] == [MANIFEST]


def test_overwrite_refuses_a_users_file_in_the_folder_a_killed_swap_set_aside(tmp_path: Path) -> None:
    """Killed between the two renames of an export's swap: the old encoder/ (holding the user's notes) is set aside,
    the new one (hard links to them) not yet in place. Both stand for encoder/, where notes.txt is the user's: they
    were taken as ours whole, and --overwrite deleted the notes."""
    import os
    import shutil

    from geomed_ssl.checkpoint import save_encoder
    from tests.test_checkpoint import tiny_encoder

    out = prepare_out_dir(tmp_path / "run", command="pretrain")
    fill(out, "metrics.csv")
    save_encoder(tiny_encoder(), out / "encoder")
    (out / "encoder" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="also holds 'encoder/notes.txt'"):
        prepare_out_dir(out, command="pretrain", overwrite=True)
    shutil.copytree(out / "encoder", out / ".partial-4242.0a1b2c3d-encoder", copy_function=os.link)
    os.replace(out / "encoder", out / ".replaced-4242.0a1b2c3d-encoder")
    with pytest.raises(OutputError, match=r"also holds '\.(partial|replaced)-4242\.0a1b2c3d-encoder/notes.txt'"):
        prepare_out_dir(out, command="pretrain", overwrite=True)
    assert (out / ".replaced-4242.0a1b2c3d-encoder" / "notes.txt").read_text() == "mine"
    (out / ".partial-4242.0a1b2c3d-encoder" / "notes.txt").unlink()
    (out / ".replaced-4242.0a1b2c3d-encoder" / "notes.txt").unlink()
    prepare_out_dir(out, command="pretrain", overwrite=True)  # what the swap left, without the notes: ours
    assert [p.name for p in out.iterdir()] == [MANIFEST]


def test_overwrite_deletes_only_the_entries_of_ours_and_refuses_before_deleting_any(tmp_path: Path) -> None:
    out = prepare_out_dir(tmp_path / "ft", command="finetune")
    fill(out, "metrics.json", "my_notes.md")
    with pytest.raises(OutputError, match="also holds 'my_notes.md'"):
        prepare_out_dir(out, command="finetune", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "metrics.json", "my_notes.md"]


@pytest.mark.parametrize("kind,command", [("run", "pretrain"), ("finetune", "finetune"), ("embed", "embed"),
                                          ("cluster", "cluster")])
def test_folders_of_earlier_versions_are_recognised_by_their_files(tmp_path: Path, kind: str, command: str) -> None:
    folder = made_by_older_version(tmp_path / "old", kind)
    found = owner(folder)
    assert found is not None and found.command == command and found.manifest is None and not found.foreign
    prepare_out_dir(folder, command=command, overwrite=True)
    assert [p.name for p in folder.iterdir()] == [MANIFEST]


def test_an_old_run_folder_with_only_an_encoder_export_is_ours_when_its_run_files_say_so(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "encoder").mkdir(parents=True)
    (run / "config.yaml").write_text("data: {}\nmodel: {}\nmethod: {name: mae}\ntrain: {}\n")
    (run / "encoder" / "config.json").write_text(json.dumps({"format": "geomed-ssl-encoder"}))
    assert owner(run) is None  # a recipe copied beside an exported encoder: the user's project folder
    (run / "metrics.csv").write_text("step,loss\n")
    assert owner(run).command == "pretrain"
    (run / "encoder" / "config.json").write_text(json.dumps({"format": "something-else"}))
    assert owner(run) is None


def test_a_recipe_beside_an_empty_checkpoints_folder_is_not_a_run(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / "checkpoints").mkdir(parents=True)
    (proj / "config.yaml").write_text("# my recipe\ndata: {}\nmodel: {}\nmethod: {name: mae}\ntrain: {}\n")
    with pytest.raises(OutputError, match="was not made by geomed-ssl"):
        prepare_out_dir(proj, command="pretrain", overwrite=True)
    assert (proj / "config.yaml").read_text().startswith("# my recipe")


def test_a_users_metrics_json_is_not_an_earlier_evaluate_folder(tmp_path: Path) -> None:
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text(json.dumps({"classes": ["a"], "test": {"oa": 0.9}}))
    with pytest.raises(OutputError, match="was not made by geomed-ssl"):
        prepare_out_dir(report, command="evaluate", resume=True)
    (report / "metrics.json").write_text(json.dumps({"classes": ["a"], "test": {"confusion": [[1]]}}))
    (report / "confusion.png").write_bytes(b"png")
    assert owner(report).command == "evaluate"


def test_overwrite_refuses_a_folder_holding_another_commands_output(tmp_path: Path) -> None:
    run = prepare_out_dir(tmp_path / "run", command="pretrain")
    (run / "metrics.csv").write_text("step,loss\n")
    prepare_out_dir(run / "previews", command="finetune")  # a fine-tune saved where previews go
    (run / "previews" / "metrics.json").write_text("{}")
    with pytest.raises(OutputError, match="holds 'previews', the output of `geomed-ssl finetune`"):
        prepare_out_dir(run, command="pretrain", overwrite=True)
    assert (run / "previews" / "metrics.json").is_file()
    ft = prepare_out_dir(tmp_path / "ft", command="finetune")
    prepare_out_dir(ft / "eval", command="evaluate")  # evaluate's own place: replaced with the fine-tune
    (ft / "eval" / "metrics.json").write_text("{}")
    prepare_out_dir(ft / "eval" / "test_b", command="evaluate")  # evaluate --out FT/eval/test_b, allowed too
    (ft / "eval" / "test_b" / "metrics.json").write_text("{}")
    assert foreign_inside(ft) == []
    ft2 = prepare_out_dir(tmp_path / "ft2", command="finetune")
    prepare_out_dir(ft2 / "eval" / "test_b", command="evaluate")  # FT/eval made as its parent, no manifest
    (ft2 / "eval" / "test_b" / "metrics.json").write_text("{}")
    assert foreign_inside(ft2) == []
    emb = prepare_out_dir(tmp_path / "emb", command="embed")
    prepare_out_dir(emb / "search", command="similar")  # similar --out EMB/search
    (emb / "search" / "similar.csv").write_text("rank,score,id,file\n")
    assert foreign_inside(emb) == []
    (run / ".partial-1st-draft.md").write_text("the user's, whatever its name")
    assert ".partial-1st-draft.md" in owner(run).foreign  # type: ignore[union-attr]


def test_another_tools_run_with_config_and_checkpoints_is_not_ours(tmp_path: Path) -> None:
    from tests.test_bad_input import other_tools_run

    other = other_tools_run(tmp_path)
    assert owner(other) is None
    with pytest.raises(OutputError, match="was not made by geomed-ssl"):
        prepare_out_dir(other, command="pretrain", overwrite=True)
    assert (other / "checkpoints" / "last.ckpt").is_file()


def test_an_old_run_is_recognised_by_a_checkpoint_of_ours(tmp_path: Path) -> None:
    import torch

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("a config.yaml an older version wrote differently\n")
    assert owner(run) is None
    torch.save({"state_dict": {}, "geomed_ssl": {"method": "mae"}}, run / "checkpoints" / "last.ckpt")
    assert owner(run).command == "pretrain"


def test_an_old_fine_tune_folder_with_config_and_checkpoints_is_a_fine_tune(tmp_path: Path) -> None:
    ft = made_by_older_version(tmp_path / "ft", "finetune")
    (ft / "config.yaml").write_text("data: {}\nmodel: {}\nmethod: {name: mae}\ntrain: {}\nfinetune: {}\n")
    (ft / "checkpoints").mkdir()
    (ft / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    assert owner(ft).command == "finetune"
    with pytest.raises(OutputError, match="holds the output of `geomed-ssl finetune`"):
        check_out_dir(ft, command="pretrain", overwrite=True)


def test_an_old_demo_folder_is_replaced_by_the_next_demo(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    (demo / "pretrain").mkdir(parents=True)
    fill(demo, ".geomed-ssl-demo")
    prepare_out_dir(demo, command="demo", overwrite=True)
    assert [p.name for p in demo.iterdir()] == [MANIFEST]
    assert read_manifest(demo)["command"] == "demo"
    prepare_out_dir(demo, command="demo", overwrite=True)  # and a demo folder of this version again


def test_overwrite_never_replaces_a_folder_another_command_made(tmp_path: Path) -> None:
    run = made_by_older_version(tmp_path / "run", "run")
    with pytest.raises(OutputError, match="`geomed-ssl pretrain`, not of `geomed-ssl demo`"):
        prepare_out_dir(run, command="demo", overwrite=True)
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_resume_keeps_the_folder_and_gives_an_old_one_a_manifest(tmp_path: Path) -> None:
    emb = made_by_older_version(tmp_path / "emb", "embed")
    fill(emb, "user_readme.txt")
    prepare_out_dir(emb, command="embed", resume=True)
    assert (emb / "user_readme.txt").is_file() and (emb / "manifest.json").is_file()
    assert read_manifest(emb)["entries"] == ["manifest.json"]


def test_a_folder_holding_only_our_manifest_counts_as_empty(tmp_path: Path) -> None:
    out = prepare_out_dir(tmp_path / "p", command="predict")
    assert check_out_dir(out, command="pretrain") == "create"


def test_check_out_dir_touches_nothing(tmp_path: Path) -> None:
    assert check_out_dir(tmp_path / "new", command="pretrain") == "create"
    assert not (tmp_path / "new").exists()


def test_out_under_a_symlinked_input_is_refused_and_the_reserved_place_is_allowed(tmp_path: Path) -> None:
    emb = made_by_older_version(tmp_path / "emb", "embed")
    (tmp_path / "link").symlink_to(emb, target_is_directory=True)
    rule = {"command": "similar", "resume": True, "inputs": {"embedding folder": tmp_path / "link"}}
    with pytest.raises(OutputError, match=r"lies inside the embedding folder .*\(or inside '.*search'\)"):
        check_out_dir(emb / "q", **rule, allow_inside=[emb / "search"])
    assert prepare_out_dir(emb / "search" / "q", **rule, allow_inside=[emb / "search"]).is_dir()


def test_an_attention_png_in_a_run_folder_is_recorded_so_overwrite_deletes_it(tmp_path: Path) -> None:
    run = prepare_out_dir(tmp_path / "run", command="pretrain")
    png = prepare_out_file(run / "attention_forest.png", command="attention")
    png.write_bytes(b"png")
    assert "attention_forest.png" in read_manifest(run)["entries"]
    prepare_out_dir(run, command="pretrain", overwrite=True)
    assert not png.exists()


def test_an_output_file_must_be_a_png_and_not_an_input(tmp_path: Path) -> None:
    from geomed_ssl.errors import ConfigError

    with pytest.raises(ConfigError, match="must name a .png file"):
        prepare_out_file(tmp_path / "run" / "encoder" / "config.json", command="attention")
    with pytest.raises(OutputError, match="is the image"):
        prepare_out_file(tmp_path / "a.png", command="attention", inputs={"image": tmp_path / "a.png"})
    made = prepare_out_file(tmp_path / "figs" / "a.png", command="attention")
    assert read_manifest(made.parent)["entries"] == ["a.png"]


def test_an_output_file_never_replaces_a_file_the_toolkit_did_not_record(tmp_path: Path) -> None:
    figure = tmp_path / "figs" / "figure1.png"
    figure.parent.mkdir()
    figure.write_bytes(b"the user's figure")
    with pytest.raises(OutputError, match="already exists, and outside a folder geomed-ssl made no file is replaced"):
        prepare_out_file(figure, command="attention")
    assert figure.read_bytes() == b"the user's figure"


def test_an_output_file_the_toolkit_recorded_is_replaced(tmp_path: Path) -> None:
    png = prepare_out_file(tmp_path / "figs" / "a.png", command="attention")
    png.write_bytes(b"png")
    assert prepare_out_file(png, command="attention") == png
    run = prepare_out_dir(tmp_path / "run", command="pretrain")
    prepare_out_file(run / "attention.png", command="attention").write_bytes(b"png")
    assert prepare_out_file(run / "attention.png", command="attention") == run / "attention.png"


def test_an_output_file_never_replaces_a_file_its_folders_command_wrote(tmp_path: Path) -> None:
    cl = prepare_out_dir(tmp_path / "cl", command="cluster")
    (cl / "scatter.png").write_bytes(b"png")
    with pytest.raises(OutputError, match="is a file `cluster` wrote, which only that command replaces"):
        prepare_out_file(cl / "scatter.png", command="attention")
    (cl / "maps").mkdir()
    (cl / "maps" / "scene_clusters.png").write_bytes(b"png")
    with pytest.raises(OutputError, match="inside the folder `cluster` made"):
        prepare_out_file(cl / "maps" / "scene_clusters.png", command="attention")
    assert (cl / "maps" / "scene_clusters.png").read_bytes() == b"png"


def test_an_output_file_inside_an_input_folder_is_refused(tmp_path: Path) -> None:
    run = prepare_out_dir(tmp_path / "run", command="pretrain")
    (run / "encoder").mkdir()
    with pytest.raises(OutputError, match="lies inside the encoder"):
        check_out_file_(run / "encoder" / "a.png", inputs={"encoder": run})
    with pytest.raises(OutputError, match="lies inside the encoder"):
        check_out_file_(run / "encoder" / "a.png", inputs={"encoder": run / "encoder"})
    check_out_file_(run / "a.png", inputs={"encoder": run})  # the top level of a run of ours: recorded there
    other = prepare_out_dir(tmp_path / "other_run", command="pretrain")  # not this command's input, still ours
    (other / "encoder").mkdir()
    with pytest.raises(OutputError, match=r"lies in 'encoder/' inside the folder `pretrain` made"):
        check_out_file_(other / "encoder" / "a.png", inputs={"encoder": run})
    with pytest.raises(OutputError, match=r"lies in 'deeper/' inside the folder `pretrain` made"):
        check_out_file_(other / "previews" / "deeper" / "a.png", inputs={"encoder": run})
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(OutputError, match="lies inside the image folder"):
        check_out_file_(data / "a.png", inputs={"image folder": data})


def test_an_output_inside_the_run_or_fine_tune_folder_holding_the_encoder_is_refused(tmp_path: Path) -> None:
    """``export RUN/encoder --out RUN/timm``, ``embed FT/model ... --out FT/e``: the encoder's folder is inside a
    folder of ours, where an output would be a foreign file (and block that folder's --overwrite)."""
    run = prepare_out_dir(tmp_path / "run", command="pretrain")
    (run / "encoder").mkdir()
    for out in (run / "timm", run / "checkpoints" / "x"):
        with pytest.raises(OutputError, match=r"lies inside the folder holding the encoder '.*run'"):
            check_out_dir(out, command="export", inputs={"encoder": run / "encoder"})
    with pytest.raises(OutputError, match="lies inside the folder holding the encoder"):
        check_out_file_(run / "checkpoints" / "a.png", inputs={"encoder": run / "encoder"})
    check_out_file_(run / "a.png", inputs={"encoder": run / "encoder"})  # the top level of a run: recorded there
    ft = prepare_out_dir(tmp_path / "ft", command="finetune")
    (ft / "model").mkdir()
    with pytest.raises(OutputError, match="lies inside the folder holding the encoder"):
        check_out_dir(ft / "e", command="embed", inputs={"encoder": ft / "model"})
    cmp = prepare_out_dir(tmp_path / "cmp", command="compare")  # compare keeps its fine-tunes of none beside it
    (cmp / "encoder_none_seed0").mkdir()
    assert check_out_dir(cmp / "finetuned_none_k5_seed0", command="finetune",
                         inputs={"encoder": cmp / "encoder_none_seed0"}) == "create"
    demo = prepare_out_dir(tmp_path / "demo", command="demo")  # a whole run inside another folder of ours
    inner = prepare_out_dir(demo / "pretrain", command="pretrain")
    assert check_out_dir(demo / "compare", command="compare", inputs={"encoder": inner}) == "create"
    plain = tmp_path / "exports" / "encoder"  # an export in a folder of the user's: only the export is an input
    plain.mkdir(parents=True)
    assert check_out_dir(tmp_path / "exports" / "e", command="embed", inputs={"encoder": plain}) == "create"


def check_out_file_(path: Path, **kwargs) -> None:
    from geomed_ssl.outdirs import check_out_file

    check_out_file(path, **kwargs)


@pytest.mark.parametrize("entries", ["data", ["../data"], ["sub/file"], [".."], [3], {"a": 1}])
def test_a_manifest_whose_entries_are_not_plain_names_is_not_ours(tmp_path: Path, entries: object) -> None:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "d").write_text("the user's")
    (out / MANIFEST).write_text(json.dumps({"tool": "geomed-ssl", "command": "cluster", "entries": entries}))
    assert read_manifest(out) is None and owner(out) is None
    with pytest.raises(OutputError, match="was not made by geomed-ssl"):
        prepare_out_dir(out, command="cluster", overwrite=True)
    assert (out / "d").is_file() and (out / "data").is_dir()


@pytest.mark.parametrize("command,placed", [
    ("pretrain", "checkpoints/my_best_model.pt"),
    ("pretrain", "checkpoints/best.ckpt"),  # a .ckpt copied in by hand: not a name our callbacks give
    ("pretrain", "checkpoints/step-1_best.ckpt"),
    ("finetune", "checkpoints/epoch_3_for_paper.ckpt"),
    ("pretrain", "encoder/notes.txt"),
    ("pretrain", "previews/figure_for_paper.png"),
    ("finetune", "model/weights_i_edited.safetensors"),
    ("embed", "maps/overview.tif"),
    ("cluster", "maps/sub/thesis.tex"),
    # a pattern's * never spans a folder: these sit one level below the names the command writes
    ("pretrain", "previews/step-by-step/my_annotated_figure.png"),
    ("pretrain", "checkpoints/last-v2_backup/best_model.ckpt"),
    ("pretrain", "previews/step-by-step.png"),  # not a step number
    ("pretrain", "checkpoints/last-v2_mine.ckpt"),
    ("cluster", "maps/old/scene_clusters.tif"),
    # compare's per-seed random encoders and kept fine-tunes are folders: a file of such a name is the user's
    ("compare", "finetuned_notes.md"),
    ("compare", "encoder_none_seed3"),
])
def test_overwrite_refuses_a_foreign_file_inside_a_subfolder_of_ours(tmp_path: Path, command: str,
                                                                     placed: str) -> None:
    out = prepare_out_dir(tmp_path / "out", command=command)
    (out / placed).parent.mkdir(parents=True, exist_ok=True)
    (out / placed).write_text("the user's")
    with pytest.raises(OutputError, match=f"also holds '{placed}'"):
        prepare_out_dir(out, command=command, overwrite=True)
    assert (out / placed).read_text() == "the user's"


@pytest.mark.parametrize(("command", "folder"), [
    ("embed", "maps/mine"), ("embed", "search/mine"), ("embed", "maps/mine/deeper"), ("pretrain", "previews/figs"),
    ("cluster", "maps/keep"), ("pretrain", "tensorboard/notes"),
])
def test_overwrite_refuses_a_users_empty_folder_inside_a_subfolder_of_ours(tmp_path: Path, command: str,
                                                                           folder: str) -> None:
    out = prepare_out_dir(tmp_path / "out", command=command)
    (out / folder).mkdir(parents=True)
    top = "/".join(folder.split("/")[:2])  # named once, at the top of what is the user's
    with pytest.raises(OutputError, match=f"also holds '{top}', which geomed-ssl did not write"):
        prepare_out_dir(out, command=command, overwrite=True)
    assert (out / folder).is_dir()
    (out / folder / "ours.ckpt").write_text("")  # a folder with something in it is judged by what it holds
    assert foreign_inside(out) == [f"{folder}/ours.ckpt"]


def test_overwrite_deletes_what_the_commands_write_inside_their_subfolders(tmp_path: Path) -> None:
    run = prepare_out_dir(tmp_path / "run", command="pretrain")
    for name in ("checkpoints/last.ckpt", "checkpoints/step-000100.ckpt", "checkpoints/.partial-12.0a1b2c3d-last.ckpt",
                 "checkpoints/last-v1.ckpt", "checkpoints/step-000200-v1.ckpt",
                 "encoder/config.json", "encoder/model.safetensors", "previews/step-000200.png",
                 "previews/.partial-7.0a1b2c3d-step-000400.png", "tensorboard/events.out.tfevents.1.host.2.0",
                 "tensorboard/hparams.yaml", ".partial-12.0a1b2c3d-encoder/config.json"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".ckpt") and "partial" not in name:
            our_checkpoint(run / name)
        else:
            (run / name).write_text("ours")
    prepare_out_dir(run, command="pretrain", overwrite=True)
    assert [p.name for p in run.iterdir()] == [MANIFEST]


def test_overwrite_deletes_a_compare_folder_with_its_selections_and_random_encoder(tmp_path: Path) -> None:
    import numpy as np

    from geomed_ssl.finetune.classify import save_selection

    cmp_dir = prepare_out_dir(tmp_path / "cmp", command="compare")
    from geomed_ssl.labels.sampling import LabelSelection

    (cmp_dir / "selections").mkdir()
    save_selection(cmp_dir / "selections" / "k5_seed0.npz", ["a.tif"], np.zeros(1, int), np.zeros(1, int),
                   np.zeros(0, int), ["c"], [])  # classification's selection, as compare saves it
    rows = np.zeros(1, np.int64)
    LabelSelection(rows, rows, rows, rows, rows, rows, [1], ["c"], [(4, 4)]).save_npz(
        cmp_dir / "selections" / "f0.01_seed1.npz")  # segmentation's
    for name in ("results.csv", "summary.md", "encoder_none_seed0/config.json",
                 "encoder_none_seed0/model.safetensors", "encoder_none/config.json",  # before 2026-12-04
                 "encoder_none/model.safetensors", ".partial-12.0a1b2c3d-encoder_none_seed1/config.json",
                 ".partial-9.0a1b2c3d-results.csv"):
        (cmp_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (cmp_dir / name).write_text("ours")
    prepare_out_dir(cmp_dir, command="compare", overwrite=True)
    assert [p.name for p in cmp_dir.iterdir()] == [MANIFEST]
    for i, name in enumerate(("encoder_none_seed0.bak/model.safetensors", "encoder_none_seeds.txt",
                              ".encoder_none_notes.md", "selections/my.npz",
                              "selections/k5_seed9.npz")):  # the user's, named like ours
        theirs = prepare_out_dir(tmp_path / f"cmp{i}", command="compare") / name
        theirs.parent.mkdir(exist_ok=True)
        theirs.write_text("theirs")
        with pytest.raises(OutputError, match=name.split("/")[0]):
            prepare_out_dir(theirs.parents[len(Path(name).parts) - 1], command="compare", overwrite=True)
        assert theirs.read_text() == "theirs"


def test_a_subfolder_with_its_own_manifest_follows_its_own_rule(tmp_path: Path) -> None:
    demo = prepare_out_dir(tmp_path / "demo", command="demo")
    run = prepare_out_dir(demo / "pretrain", command="pretrain")
    our_checkpoint(run / "checkpoints" / "last.ckpt")
    (run / "my_notes.md").write_text("the user's")
    with pytest.raises(OutputError, match="also holds 'pretrain/my_notes.md'"):
        prepare_out_dir(demo, command="demo", overwrite=True)
    (run / "my_notes.md").unlink()
    prepare_out_dir(demo, command="demo", overwrite=True)
    assert [p.name for p in demo.iterdir()] == [MANIFEST]


def test_a_subfolder_of_a_nested_command_holding_a_foreign_file_is_refused(tmp_path: Path) -> None:
    emb = prepare_out_dir(tmp_path / "emb", command="embed")
    query = prepare_out_dir(emb / "search" / "q", command="similar")
    (query / "similar.csv").write_text("rank,score,id,file\n")
    prepare_out_dir(emb, command="embed", overwrite=False, resume=True)
    (query / "draft.docx").write_text("the user's")
    with pytest.raises(OutputError, match="also holds 'search/q/draft.docx'"):
        prepare_out_dir(emb, command="embed", overwrite=True)


def test_an_input_folder_named_none_is_still_an_input(tmp_path: Path, monkeypatch) -> None:
    from geomed_ssl.outdirs import check_inputs

    monkeypatch.chdir(tmp_path)
    Path("none").mkdir()
    with pytest.raises(OutputError, match="lies inside the data folder 'none'"):
        check_inputs("none/run", {"data folder": "none"})
    from geomed_ssl.finetune.fit import finetune_inputs

    assert finetune_inputs(None, "none", images="imgs")["encoder"] is None  # the encoder keyword: no input


@pytest.mark.parametrize("where", ["is", "inside", "contains"])
def test_the_same_folder_spelt_another_way_is_found_by_device_and_inode(tmp_path: Path, monkeypatch,
                                                                       where: str) -> None:
    """A case-insensitive filesystem or a bind mount gives one folder two spellings that resolve() leaves apart;
    simulated with a symbolic link that is not resolved."""
    import geomed_ssl.outdirs as outdirs

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (tmp_path / "DATA").symlink_to(data, target_is_directory=True)
    monkeypatch.setattr(outdirs, "_resolved", lambda p: Path(p).expanduser().absolute())
    out, message = {"is": (tmp_path / "DATA", "is the data folder"),
                    "inside": (tmp_path / "DATA" / "run", "lies inside the data folder"),
                    "contains": (tmp_path / "DATA", "contains the data folder")}[where]
    inputs = {"data folder": data if where != "contains" else data / "sub"}
    with pytest.raises(OutputError, match=message):
        outdirs.check_inputs(out, inputs)


def test_a_folder_holding_only_a_users_file_named_like_an_old_temporary_one_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "u2"
    out.mkdir()
    (out / ".partial-2024-draft.md").write_text("my draft")
    with pytest.raises(OutputError, match="draft"):
        prepare_out_dir(out, command="pretrain")
    assert (out / ".partial-2024-draft.md").read_text() == "my draft"


def test_reusing_a_folder_deletes_what_a_killed_writer_left_there_and_nothing_else(tmp_path: Path) -> None:
    """evaluate / similar / compare reuse their folder: a kill's partial file goes with the next run."""
    from geomed_ssl.outfiles import host_tag
    from tests.test_outfiles import dead_pid

    dead = dead_pid()
    out = prepare_out_dir(tmp_path / "ev", command="evaluate")
    (out / "metrics.json").write_text("{}")
    left = out / f".partial-{dead}.{host_tag()}-confusion.png"
    left.write_bytes(b"half")
    prepare_out_dir(out, command="evaluate", resume=True)
    assert not left.exists() and (out / "metrics.json").is_file()
    figure = tmp_path / "figs" / "attention.png"
    figure.parent.mkdir()
    (figure.parent / f".partial-{dead}.{host_tag()}-attention.png").write_bytes(b"half")
    (figure.parent / f".partial-{dead}.{host_tag()}-other.png").write_bytes(b"another file's")
    prepare_out_file(figure, command="attention")
    assert [p.name for p in figure.parent.iterdir()] == [f".partial-{dead}.{host_tag()}-other.png"]


def test_a_users_folder_holding_copies_of_an_evaluation_is_not_taken_over(tmp_path: Path) -> None:
    """evaluate and similar write over their outputs when they reuse a folder: one recognised only by such files
    (no manifest) but holding the user's paper too is refused; a folder of theirs is still reused."""
    def evaluation(folder: Path) -> Path:  # metrics.json and confusion.png as evaluate writes them
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"classes": ["a", "b"], "test": {"confusion": [[1]]}}))
        (folder / "confusion.png").write_bytes(b"png")
        return folder

    paper = evaluation(tmp_path / "paper")
    fill(paper, "paper.tex")
    with pytest.raises(OutputError, match="not made by it as far as geomed-ssl can tell.*paper.tex"):
        check_out_dir(paper, command="evaluate", resume=True)
    assert check_out_dir(evaluation(tmp_path / "old"), command="evaluate", resume=True) == "reuse"


def test_a_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    """As root (these tests) a mode does not stop a write, so the read-only mount is played by os.access."""
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and real(p, mode))
    with pytest.raises(OutputError, match=rf"cannot write in '{tmp_path}' \(read-only or not yours\)"):
        check_out_dir(tmp_path / "new" / "deeper", command="cluster")
    monkeypatch.setattr(os, "access", real)
    assert check_out_dir(tmp_path / "new" / "deeper", command="cluster") == "create"


@pytest.mark.parametrize("flag", ["resume", "overwrite"])
def test_a_link_named_like_an_output_is_the_users_and_never_written_through(tmp_path: Path, flag: str) -> None:
    """A user's ``encoder -> ../my_models/enc`` inside a run folder: --resume would have exported into their
    folder, --overwrite removed the link; both are refused, naming it."""
    run = prepare_out_dir(tmp_path / "run", command="pretrain")
    (run / "config.yaml").write_text("train: {}\n")
    mine = tmp_path / "my_models" / "enc"
    mine.mkdir(parents=True)
    (mine / "model.safetensors").write_bytes(b"the user's weights")
    (run / "encoder").symlink_to(mine, target_is_directory=True)
    with pytest.raises(OutputError, match="'encoder', which geomed-ssl did not"):
        check_out_dir(run, command="pretrain", **{flag: True})
    assert (mine / "model.safetensors").read_bytes() == b"the user's weights" and (run / "encoder").is_symlink()


def test_overwrite_keeps_a_users_file_named_like_a_prediction_in_a_nested_predict_folder(tmp_path: Path) -> None:
    """A demo's prediction/ is predict's folder: a map there that records its input is ours, but the user's
    rf_baseline_pred.tif (another tool's, named as predict names its maps) is not, and --overwrite refuses."""
    import numpy as np
    import rasterio

    from geomed_ssl.outcommands import provenance_tags
    from geomed_ssl.outfiles import host_tag

    demo = prepare_out_dir(tmp_path / "demo", command="demo")
    (demo / ".geomed-ssl-demo").write_text("")
    prediction = prepare_out_dir(demo / "prediction", command="predict")
    profile = dict(driver="GTiff", width=4, height=4, count=1, dtype="uint8")
    with rasterio.open(prediction / "scene_pred.tif", "w", **profile) as dst:
        dst.write(np.zeros((1, 4, 4), np.uint8))
        dst.update_tags(**provenance_tags(str(tmp_path / "scene.tif")))
    with rasterio.open(prediction / "rf_baseline_pred.tif", "w", **profile) as dst:  # the user's
        dst.write(np.ones((1, 4, 4), np.uint8))
    (prediction / f".partial-99999999.{host_tag()}-b_pred.tif").write_bytes(b"half")  # a killed predict's draft
    assert foreign_inside(demo) == ["prediction/rf_baseline_pred.tif"]
    with pytest.raises(OutputError, match="also holds 'prediction/rf_baseline_pred.tif'"):
        prepare_out_dir(demo, command="demo", overwrite=True)
    assert (prediction / "rf_baseline_pred.tif").is_file()
    (prediction / "rf_baseline_pred.tif").unlink()
    prepare_out_dir(demo, command="demo", overwrite=True)
    assert not (demo / "prediction").exists()


@pytest.mark.parametrize("flag", ["resume", "overwrite"])
@pytest.mark.parametrize("placed", ["checkpoints/last.ckpt", "config.yaml", "previews/old"])
def test_a_link_to_a_file_or_folder_anywhere_in_a_run_is_the_users(tmp_path: Path, flag: str, placed: str) -> None:
    """A user's ``checkpoints/last.ckpt -> ~/elsewhere/my.ckpt`` was resumed from and then replaced (or deleted by
    --overwrite): only links to folders at the top were taken for the user's. The toolkit makes no links at all."""
    run = prepare_out_dir(tmp_path / "run", command="pretrain")
    (run / "checkpoints").mkdir()
    our_checkpoint(run / "checkpoints" / "step-000010.ckpt")
    (run / "previews").mkdir()
    mine = tmp_path / "elsewhere" / Path(placed).name
    mine.parent.mkdir()
    mine.mkdir() if placed == "previews/old" else mine.write_text("the user's")
    (run / placed).symlink_to(mine, target_is_directory=mine.is_dir())
    with pytest.raises(OutputError, match=f"also holds '{placed}', which geomed-ssl did not"):
        prepare_out_dir(run, command="pretrain", **{flag: True})
    assert (run / placed).is_symlink() and mine.exists()


def test_sizes_in_warnings_are_in_the_unit_that_shows_them() -> None:
    from geomed_ssl.outdirs import size_text

    assert [size_text(n) for n in (3.24e9, 48e9, 48e6, 5.2e5, 999, 999.96e6)] == ["3.2 GB", "48 GB", "48 MB",
                                                                                "520 kB", "999 bytes", "1.0 GB"]


def test_an_out_that_is_a_loop_of_links_is_one_line(tmp_path: Path) -> None:
    """It was a RuntimeError traceback from Path.resolve()."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OutputError, match="cannot be resolved .*a loop of symbolic links"):
        check_out_dir(tmp_path / "a", command="pretrain", inputs={"data folder": tmp_path / "data"})


def test_overwrite_deletes_an_empty_draft_folder_a_killed_writer_left_inside_a_subfolder(tmp_path: Path) -> None:
    """embed's part writer makes parts/.partial-<pid>.<host>-part-x/ before its first chunk: killed then, the empty
    draft was taken for a folder of the user's and --overwrite refused the folder."""
    out = prepare_out_dir(tmp_path / "emb", command="embed")
    fill(out, "manifest.json")
    (out / "parts" / ".partial-4242.0a1b2c3d-part-abcd1234").mkdir(parents=True)
    prepare_out_dir(out, command="embed", overwrite=True)
    assert [p.name for p in out.iterdir()] == [MANIFEST]


def test_a_checkpoint_is_ours_by_its_contents_not_its_name(tmp_path: Path) -> None:
    """A manifest copied into a folder of the user's made their plain-text checkpoints/last.ckpt ours by its name,
    and --overwrite deleted it."""
    import shutil

    import torch

    run = prepare_out_dir(tmp_path / "run", command="pretrain")
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "geomed_ssl": {"method": "mae"}}, run / "checkpoints" / "last.ckpt")
    fill(run, "metrics.csv")
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "last.ckpt").write_text("precious")
    fill(mine, "metrics.csv")
    shutil.copy(run / MANIFEST, mine / MANIFEST)
    with pytest.raises(OutputError, match="also holds 'checkpoints/last.ckpt'"):
        prepare_out_dir(mine, command="pretrain", overwrite=True)
    assert (mine / "checkpoints" / "last.ckpt").read_text() == "precious"
    prepare_out_dir(run, command="pretrain", overwrite=True)  # a checkpoint of ours goes
    assert [p.name for p in run.iterdir()] == [MANIFEST]
