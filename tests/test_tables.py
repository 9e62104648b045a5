"""Label CSVs as spreadsheets write them: BOM, Windows-1252, semicolons, spaces and case in the header."""

from __future__ import annotations

from pathlib import Path

import pytest

from geomed_ssl.tables import read_rows
from geomed_ssl.errors import DataError


@pytest.mark.parametrize("encoding,sep", [("utf-8-sig", ","), ("cp1252", ";"), ("utf-8", "\t")])
def test_rows_are_read_whatever_excel_wrote(tmp_path: Path, encoding: str, sep: str) -> None:
    path = tmp_path / "labels.csv"
    text = sep.join(["File", " Label ", "note"]) + "\r\n" + sep.join(["./a.tif", "Forêt", "x"]) + "\r\n\r\n"
    path.write_bytes(text.encode(encoding))
    assert read_rows(path, ("file", "label")) == [{"#line": "2", "file": "./a.tif", "label": "Forêt", "note": "x"}]


def test_a_missing_column_names_the_file_and_what_it_found(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("path,class\na.tif,1\n")
    with pytest.raises(DataError, match=r"labels CSV '.*labels.csv' needs a header row with columns file, label; "
                                        r"found path, class"):
        read_rows(path, ("file", "label"), "labels CSV")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="found nothing"):
        read_rows(tmp_path / "empty.csv", ("file", "label"))


def test_cluster_finds_files_listed_with_a_leading_dot_slash(tmp_path: Path) -> None:
    from geomed_ssl.embeddings.truth import true_labels

    files = [str(tmp_path / "data" / "River" / "r.tif"), str(tmp_path / "data" / "Forest" / "f.tif")]
    table = tmp_path / "labels.csv"
    table.write_bytes("file; label\r\n./River/r.tif;Rivière\r\nForest/f.tif;Forêt\r\n".encode("cp1252"))
    truth, source = true_labels(str(table), {"settings": {"data_dir": str(tmp_path / "data")}}, {"file": files})
    assert truth == ["Rivière", "Forêt"] and source == "CSV labels.csv"
