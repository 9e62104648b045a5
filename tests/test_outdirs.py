"""The output-folder rule: manifests, what --overwrite may delete, earlier versions' folders, inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geomed_ssl.errors import OutputError
from geomed_ssl.outdirs import MANIFEST, check_out_dir, owner, prepare_out_dir, prepare_out_file, read_manifest
from tests.test_bad_input import made_by_older_version


def fill(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_text(name)


def test_a_new_folder_gets_a_manifest_naming_the_command_and_its_entries(tmp_path: Path) -> None:
    out = prepare_out_dir(tmp_path / "a" / "run", command="pretrain")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["tool"] == "geomed-ssl" and manifest["command"] == "pretrain" and manifest["version"]
    assert manifest["created"].endswith("+00:00")
    assert {"config.yaml", "checkpoints", "encoder"} <= set(manifest["entries"])
    assert [p.name for p in out.iterdir()] == [MANIFEST]


def test_overwrite_replaces_a_folder_of_ours(tmp_path: Path) -> None:
    out = prepare_out_dir(tmp_path / "cl", command="cluster")
    fill(out, "summary.json", "clusters.csv", ".partial-1-scatter.png")
    (out / "maps").mkdir()
    fill(out / "maps", "a_clusters.tif")
    with pytest.raises(OutputError, match="pass --overwrite"):
        prepare_out_dir(out, command="cluster")
    prepare_out_dir(out, command="cluster", overwrite=True)
    assert [p.name for p in out.iterdir()] == [MANIFEST]



def test_overwrite_deletes_what_killed_writers_of_this_and_earlier_versions_left(tmp_path: Path) -> None:
    out = prepare_out_dir(tmp_path / "run", command="pretrain")
    fill(out, "metrics.csv", ".partial-4242-metrics.csv", ".metrics.csv.tmp-17-00ff00", "metrics.csv.tmp")
    (out / ".partial-4242-encoder").mkdir()  # an encoder export swapped in by a killed run
    (out / ".replaced-4242-encoder").mkdir()
    assert not owner(out).foreign  # type: ignore[union-attr]
    prepare_out_dir(out, command="pretrain", overwrite=True)
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


def test_an_old_run_folder_with_only_an_encoder_export_is_ours(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "encoder").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    (run / "encoder" / "config.json").write_text(json.dumps({"format": "geomed-ssl-encoder"}))
    assert owner(run).command == "pretrain"
    (run / "encoder" / "config.json").write_text(json.dumps({"format": "something-else"}))
    assert owner(run) is None


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
