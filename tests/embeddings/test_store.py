"""The embedding table's columns as read back."""

from __future__ import annotations


def test_string_columns_are_read_chunk_by_chunk_and_share_their_repeated_values() -> None:
    """Each row of a file repeats its path and CRS WKT: one str per distinct value (gigabytes of copies for millions
    of rows before) and no joined array (3.6 million 600-character CRSs overflowed Arrow's 32-bit offsets: a raw
    traceback)."""
    import pyarrow as pa

    from geomed_ssl.embeddings.store import _as_columns

    wkt = "PROJCS[" + "x" * 600 + "]"
    table = pa.table({"crs": pa.chunked_array([pa.array([wkt, None, "b"]), pa.array(["b", wkt])]),
                      "row": pa.chunked_array([[0, 1, 2], [3, 4]])})
    out = _as_columns(table)
    assert out["crs"] == [wkt, None, "b", "b", wkt] and out["crs"][0] is out["crs"][4]
    assert out["row"].tolist() == [0, 1, 2, 3, 4]
