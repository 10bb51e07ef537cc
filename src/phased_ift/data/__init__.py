"""Instruction data: one internal record (`Example`), readers for the common formats, validation with rejects,
named sources and test sets. Returns data; printing is the CLI's (`phased-ift data check` / `data sources`).

    example.py   `Example`, `normalize_text`, `read_examples` / `iter_examples` / `write_examples` (data/train.jsonl
                 rows), `ExampleFile` (such a file as a lazy sequence: ids in memory, rows read when asked for; its
                 `lines` and `example_of_line` for a reader that decodes the rows elsewhere),
                 `example_head` / `with_meta` (a row's id and meta read / its meta updated without decoding its
                 messages)
    loading.py   a file -> raw records with line numbers: text, JSON array, JSON lines, Hugging Face `datasets`
    formats.py   one converter per format (`FORMATS`), detection, record checks, `read_file` / `iter_file`
                 (streamed), `read_records` (records in memory: dicts, a `datasets.Dataset`), `ReadResult`
    sources.py   `SOURCES`, `TEST_SETS`, `data_home`, `load_source` / `stream_source`, `load_test_set`, reference
                 answers, `combine_results` / `combine_streams`, `check_file`, `source_status`,
                 `source_provenance` (PROVENANCE.md)

Formats (`read_file(path, fmt)`; `fmt="auto"` detects from the file, an explicit format wins): alpaca, phasedsft,
sharegpt, messages, testset, hf (see `formats.py`). A record that cannot be used becomes a reject {"source",
"line", "record", "reason"} (counted, written out, never dropped silently); a file that cannot be read at all
raises `PhasedIFTError` naming the file, line and fix.

Named sources (`SOURCES`) and test sets (`TEST_SETS`) resolve under the data home (`data_home()`:
$PHASED_IFT_DATA_HOME, else ./data, else ../shared/data).

Run `phased-ift data check PATH [--format F]` to validate a file, `phased-ift data sources` to list named sources.
jsonl files of the run dir are read and written by `phased_ift.runio`.
"""

from phased_ift.data.example import (Example, ExampleFile, example_head, example_head_key, example_of_line,
                                     iter_examples, normalize_text, read_examples, row_head, unique_id, with_meta,
                                     write_examples)
from phased_ift.data.formats import FORMAT_NAMES, FORMATS, ReadResult, iter_file, read_file, read_records
from phased_ift.data.sources import (DATA_HOME_ENV, SOURCES, TEST_SETS, CheckReport, SourceInfo, SourceStatus,
                                     TestSetInfo, check_file, combine_results, combine_streams, data_home,
                                     find_reference, load_reference_answers, load_source, load_test_set, source_path,
                                     source_provenance, source_status, stream_source)

__all__ = [
    "CheckReport", "DATA_HOME_ENV", "Example", "ExampleFile", "FORMATS", "FORMAT_NAMES", "ReadResult", "SOURCES",
    "SourceInfo", "SourceStatus", "TEST_SETS", "TestSetInfo", "check_file", "combine_results", "combine_streams",
    "data_home", "example_head", "example_head_key", "example_of_line", "find_reference", "iter_examples",
    "iter_file", "load_reference_answers", "load_source", "load_test_set", "normalize_text", "read_examples",
    "read_file", "row_head", "source_path", "source_provenance", "source_status", "stream_source", "unique_id",
    "with_meta", "write_examples",
]
