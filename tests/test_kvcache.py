"""KVCache, the one sqlite key-value cache (LLM responses, losses, embeddings): round trips, persistence, threads,
several tables in one file, the column layouts of the files written before it."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from phased_ift.kvcache import SQL_VARS, KVCache


def test_json_round_trip_get_many_and_len(tmp_path):
    with KVCache(tmp_path / "c" / "kv.sqlite", "t") as kv:  # the folder is created
        value = {"text": "héllo ✓", "n": 3, "x": 0.1 + 0.2, "nested": [1, None, {"a": True}]}
        kv.put("a", value)
        kv.put_many([("b", [1, 2]), ("c", "plain"), ("d", 1.0 / 3)])
        assert kv.get("a") == value and kv.get("d") == 1.0 / 3  # floats come back exactly
        assert kv.get("missing") is None and kv.get("missing", "dflt") == "dflt"
        assert "a" in kv and "missing" not in kv and len(kv) == 4
        assert kv.get_many(["c", "missing", "b", "c"]) == {"c": "plain", "b": [1, 2]}
        kv.put("a", {"replaced": 1})
        assert kv.get("a") == {"replaced": 1} and len(kv) == 4


def test_get_many_past_the_sql_variable_chunk(tmp_path):
    n = 2 * SQL_VARS + 7
    with KVCache(tmp_path / "kv.sqlite", "t") as kv:
        kv.put_many((f"k{i}", i) for i in range(n))
        got = kv.get_many([f"k{i}" for i in range(n + 5)])
    assert got == {f"k{i}": i for i in range(n)}


def test_bytes_round_trip_of_float32_vectors(tmp_path):
    vecs = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    with KVCache(tmp_path / "kv.sqlite", "emb", codec="bytes") as kv:
        kv.put_many((str(i), v.tobytes()) for i, v in enumerate(vecs))
        back = kv.get_many(["0", "1", "2"])
        with pytest.raises(TypeError, match="stores bytes"):
            kv.put("x", [1.0, 2.0])
    assert np.array_equal(np.stack([np.frombuffer(back[str(i)], np.float32) for i in range(3)]), vecs)


def test_values_persist_across_instances_and_the_file_is_wal(tmp_path):
    path = tmp_path / "kv.sqlite"
    kv = KVCache(path, "t")
    kv.put("k", {"v": 1})
    kv.close()
    kv.close()  # idempotent
    with KVCache(path, "t") as again:
        assert again.get("k") == {"v": 1}
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_a_second_table_in_the_same_file_is_separate(tmp_path):
    path = tmp_path / "kv.sqlite"
    with KVCache(path, "first") as a, KVCache(path, "second", codec="bytes") as b:
        a.put("k", "from a")
        b.put("k", b"from b")
        assert a.get("k") == "from a" and b.get("k") == b"from b" and len(a) == len(b) == 1


def test_threads_sharing_one_instance_and_threads_with_their_own_lose_no_write(tmp_path):
    path = tmp_path / "kv.sqlite"
    shared = KVCache(path, "t")
    errors: list[BaseException] = []

    def write_shared(t: int) -> None:
        try:
            for i in range(50):
                shared.put(f"s{t}-{i}", {"t": t, "i": i})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def write_own(t: int) -> None:
        try:
            with KVCache(path, "t") as own:
                for i in range(0, 50, 10):
                    own.put_many((f"o{t}-{j}", j) for j in range(i, i + 10))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write_shared, args=(t,)) for t in range(4)]
    threads += [threading.Thread(target=write_own, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(shared) == 4 * 50 + 4 * 50
    assert shared.get("s3-49") == {"t": 3, "i": 49} and shared.get("o2-17") == 17
    shared.close()


def test_note_column_is_written_beside_the_value(tmp_path):
    path = tmp_path / "kv.sqlite"
    with KVCache(path, "responses", value_column="response", note_column="request") as kv:
        kv.put("k", {"answer": 4}, note={"z": 1, "a": "é"})
        with pytest.raises(ValueError, match="one note per item"):
            kv.put("k2", {"answer": 5})
        assert kv.get("k") == {"answer": 4}
    con = sqlite3.connect(path)
    note, created = con.execute("SELECT request, created FROM responses").fetchone()
    assert note == '{"a": "é", "z": 1}' and created > 0  # sorted keys, readable text
    con.close()


def test_reads_and_writes_a_table_written_before_kvcache(tmp_path):
    """The layouts of the old caches: llm.sqlite responses(key, request, response, created), embeddings emb(key, vec)."""
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, request TEXT NOT NULL, response TEXT NOT NULL, "
                "created REAL NOT NULL)")
    con.execute("INSERT INTO responses VALUES ('k', '{}', '{\"choices\": []}', 1.0)")
    con.execute("CREATE TABLE emb (key TEXT PRIMARY KEY, vec BLOB)")
    con.execute("INSERT INTO emb VALUES ('e', ?)", (b"\x00\x01",))
    con.commit()
    con.close()
    with KVCache(path, "responses", value_column="response", note_column="request") as kv:
        assert kv.get("k") == {"choices": []}
        kv.put("k2", {"x": 1}, note={"messages": []})
        assert len(kv) == 2
    with KVCache(path, "emb", codec="bytes", value_column="vec", timestamps=False) as kv:
        assert kv.get("e") == b"\x00\x01"
        kv.put("e2", b"\x02")
        assert kv.get_many(["e", "e2"]) == {"e": b"\x00\x01", "e2": b"\x02"}


def test_a_table_with_other_columns_and_bad_names_are_refused(tmp_path):
    path = tmp_path / "kv.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE losses (key TEXT PRIMARY KEY, loss_cond REAL)")
    con.commit()
    con.close()
    with pytest.raises(sqlite3.DatabaseError, match="'losses' has the columns"):
        KVCache(path, "losses")
    with pytest.raises(ValueError, match="not a valid"):
        KVCache(path, "drop table; --")
    with pytest.raises(ValueError, match="codec"):
        KVCache(path, "t", codec="pickle")
