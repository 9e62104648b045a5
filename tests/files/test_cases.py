"""Cases of a folder that holds several stacked samples (data.channels): nnU-Net's and BraTS' file names."""

from __future__ import annotations

import pytest

from geomed_ssl.files.cases import case_name, group_cases, is_case_file


@pytest.mark.parametrize(("name", "glob", "case"), [
    ("case_000_0000.nii.gz", "*_0000.nii.gz", "case_000"),  # nnU-Net
    ("BraTS_001_flair.nii.gz", "*_flair.nii.gz", "BraTS_001"),
    ("BraTS_001_flair.nii.gz", "*flair*", "BraTS_001"),  # wildcards on both sides: the extension dropped
    ("BraTS_001_flair.nii.gz", "*_[Ff]lair.nii.gz", "BraTS_001"),  # classes and ? name no case beside a *
    ("sub-01_ses-02_T1w.nii.gz", "sub-*_ses-*_T1w.nii.gz", "01_02"),  # several *: joined, never run together
    ("LC08_B4.TIF", "*_b4.tif", "LC08"),  # globs match in any case; the case keeps the file's
    ("s1_red.tif", "s?_red.tif", "1"),
    ("x.tif", "*.tif", "x"),
    ("Flair.nii.gz", "*Flair*", ""),  # a per-case folder's file: it names no case
    ("flair.nii.gz", "flair.nii.gz", ""),
])
def test_a_files_case_is_what_its_globs_wildcards_match(name, glob, case) -> None:
    assert case_name(name, glob) == case


def test_a_file_the_glob_does_not_match_has_no_case() -> None:
    assert case_name("case_000_0001.nii.gz", "*_0000.nii.gz") is None


def test_cases_stack_their_files_in_glob_order_and_an_incomplete_case_is_named() -> None:
    files = ["/d/c1_0001.nii.gz", "/d/c1_0000.nii.gz", "/d/c2_0000.nii.gz", "/d/c2_0001.nii.gz",
             "/d/c3_0000.nii.gz", "/d/dataset.json"]
    stacks, why = group_cases(files, ["*_0000.nii.gz", "*_0001.nii.gz"])
    assert stacks == {"c1": ["/d/c1_0000.nii.gz", "/d/c1_0001.nii.gz"],
                      "c2": ["/d/c2_0000.nii.gz", "/d/c2_0001.nii.gz"]}
    assert len(why) == 1 and why[0][0] == "c3" and "no file of channel '*_0001.nii.gz'" in why[0][1]


def test_cases_are_told_apart_ignoring_letter_case_as_globs_match() -> None:
    stacks, why = group_cases(["/d/Case_1_0000.nii.gz", "/d/case_1_0001.nii.gz"], ["*_0000.nii.gz", "*_0001.nii.gz"])
    assert stacks == {"Case_1": ["/d/Case_1_0000.nii.gz", "/d/case_1_0001.nii.gz"]} and why == []


def test_a_folder_whose_files_name_no_case_is_left_to_be_one_sample() -> None:
    """p1/flair.nii.gz, p1/flair_n4.nii.gz, ...: the catalog refuses the folder's glob as too wide, never stacks the
    N4 files as a case 'n4'."""
    files = ["/p1/flair.nii.gz", "/p1/flair_n4.nii.gz", "/p1/t1c.nii.gz", "/p1/t1c_n4.nii.gz"]
    assert group_cases(files, ["*flair*", "*t1c*"]) == ({}, [])


def test_a_file_two_globs_pick_stops_the_folder_naming_both_globs() -> None:
    stacks, why = group_cases(["/d/p1_t1.nii.gz", "/d/p1_t1ce.nii.gz", "/d/p2_t1.nii.gz", "/d/p2_t1ce.nii.gz"],
                              ["*t1*", "*t1ce*"])
    assert stacks == {} and why[0][0] is None and "matches channel globs '*t1*' and '*t1ce*'" in why[0][1]


def test_only_a_file_of_several_channels_stands_for_its_case(tmp_path) -> None:
    f = tmp_path / "c1_0000.nii.gz"
    f.write_bytes(b"")
    assert is_case_file(f, ["*_0000.nii.gz", "*_0001.nii.gz"])
    assert not is_case_file(f, ["*_0000.nii.gz"])  # one glob: the file is the sample
    assert not is_case_file(f, ["*_0001.nii.gz", "*_0002.nii.gz"]) and not is_case_file(tmp_path, ["*", "*x"])
