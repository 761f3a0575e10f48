"""read_rows on files in the wrong encoding, with a BOM, or with repeated ids; and every real file loads."""

from __future__ import annotations

import json
import shutil

import pytest

from datamodules.tasks.rows import read_rows
from datamodules.errors import DataError, one_line
from tests.conftest import TASKS
from tests.test_fewclue_rows import corrupt_line, eprstmt_copy, line_count, load_task  # noqa: F401 (fixture)

SPLIT_FILES = [f"{kind}_{i}.json" for kind in ("train", "dev") for i in range(5)]
SPLIT_FILES += ["train_few_all.json", "dev_few_all.json", "test.json", "unlabeled.json"]


def comparable(rows):
    return [(row.id, row.fields, row.label, row.line) for row in rows]


def test_gbk_file_names_file_first_line_and_utf8(eprstmt_copy):
    path = eprstmt_copy / "train_0.json"
    path.write_bytes(path.read_text(encoding="utf-8").encode("gbk"))
    with pytest.raises(DataError) as err:
        read_rows(load_task("eprstmt"), path, labelled=True)
    message = str(err.value)
    assert message.startswith(f"1 bad row(s) in {path}:")  # one line says it, not one per line
    assert f"{path}:1: not UTF-8 text (" in message
    assert message.endswith("; the file must be UTF-8")


def test_bad_byte_on_a_later_line_names_that_line(eprstmt_copy):
    path = eprstmt_copy / "dev_0.json"
    lines = path.read_bytes().splitlines()
    lines[3] = lines[3].replace(b'"sentence": "', b'"sentence": "\xff', 1)
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as err:
        read_rows(load_task("eprstmt"), path, labelled=True)
    message = str(err.value)
    column = lines[3].index(b"\xff") + 1
    assert f"{path}:4: not UTF-8 text (byte 0xff at byte {column} of the line: invalid start byte)" in message
    assert "the file must be UTF-8" in message and f"{path}:1:" not in message


def test_utf8_bom_is_read_like_the_file_without_it(eprstmt_copy):
    path = eprstmt_copy / "train_0.json"
    with_bom = eprstmt_copy / "train_bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    task = load_task("eprstmt")
    expected = read_rows(task, path, labelled=True)
    assert comparable(read_rows(task, with_bom, labelled=True)) == comparable(expected)


def set_id(path, line_number: int, id_field: str, value) -> None:
    row = json.loads(path.read_text(encoding="utf-8").splitlines()[line_number - 1])
    row[id_field] = value
    corrupt_line(path, line_number, json.dumps(row, ensure_ascii=False))


@pytest.mark.parametrize(
    "task_name, file_name, labelled, id_field",
    [
        ("eprstmt", "test.json", False, "id"),
        ("eprstmt", "unlabeled.json", False, "id"),
        ("tnews", "test.json", False, "id"),  # string ids
        ("cluewsc", "train_0.json", True, "idx"),  # asked for: unique_ids=True
    ],
)
def test_duplicate_id_names_file_both_lines_and_id(task_name, file_name, labelled, id_field, shared_fewclue, tmp_path):
    path = tmp_path / file_name
    shutil.copy(shared_fewclue / task_name / file_name, path)
    path.chmod(0o644)
    first_id = json.loads(path.read_text(encoding="utf-8").splitlines()[1])[id_field]
    set_id(path, 5, id_field, first_id)
    with pytest.raises(DataError) as err:
        read_rows(load_task(task_name), path, labelled=labelled, unique_ids=True if labelled else None)
    message = str(err.value)
    assert message.startswith(f"1 bad row(s) in {path}:")
    assert f"{path}:5: duplicate id {first_id!r} (first on line 2)" in message


def test_a_labelled_file_may_repeat_ids_and_the_log_says_so_once(shared_fewclue, tmp_path, caplog):
    """Upstream's csldcp test_public.json repeats 49 ids (with other texts): labelled rows are scored, not joined."""
    path = tmp_path / "dev_0.json"
    shutil.copy(shared_fewclue / "eprstmt" / "dev_0.json", path)
    path.chmod(0o644)
    first_id = json.loads(path.read_text(encoding="utf-8").splitlines()[1])["id"]
    set_id(path, 5, "id", first_id)
    set_id(path, 7, "id", first_id)
    with caplog.at_level("INFO"):
        rows = read_rows(load_task("eprstmt"), path, labelled=True)
    assert len(rows) == line_count(path) and [r.id for r in rows].count(first_id) == 3
    assert [r.getMessage() for r in caplog.records if "repeat an earlier row's id" in r.getMessage()] == [
        f"{path}: 2 row(s) repeat an earlier row's id; kept (ids need to be unique only in files whose rows are "
        "predicted)"]


@pytest.mark.parametrize(("value", "shown"), [("null", "null"), ('""', "an empty text"), ('"  "', "an empty text"),
                                              ("3", "int 3"), ('{"a": 1}', "dict {'a': 1}"),
                                              ('["好", "差"]', "list ['好', '差']")])  # lists: csl's keyword only
def test_a_text_that_is_not_a_nonempty_string_names_file_line_and_field(value, shown, eprstmt_copy):
    path = eprstmt_copy / "test.json"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = '{"id": 999, "sentence": ' + value + '}'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_rows(load_task("eprstmt"), path, labelled=False)
    assert f"{path}:3: field 'sentence': {shown}" in str(err.value)


def test_duplicate_ids_are_listed_with_the_other_errors(eprstmt_copy):
    path = eprstmt_copy / "test.json"
    set_id(path, 5, "id", 1)
    set_id(path, 2, "id", 1)
    corrupt_line(path, 3, "{broken")
    with pytest.raises(DataError) as err:
        read_rows(load_task("eprstmt"), path, labelled=False)
    message = str(err.value)
    assert message.startswith(f"2 bad row(s) in {path}:")
    assert f"{path}:3: malformed JSON" in message
    assert f"{path}:5: duplicate id 1 (first on line 2)" in message


def test_more_than_20_bad_rows_say_in_one_line_that_the_list_stopped(eprstmt_copy):
    path = eprstmt_copy / "train_0.json"
    good = path.read_text(encoding="utf-8")
    for line_number in range(2, 26):  # 24 bad rows: the first 20 are listed
        corrupt_line(path, line_number, "{broken")
    with pytest.raises(DataError) as err:
        read_rows(load_task("eprstmt"), path, labelled=True)
    assert str(err.value).startswith(f"20 bad row(s) in {path} (stopped at the first 20):")
    assert one_line(err.value) == (f"{path}:2: malformed JSON (Expecting property name enclosed in double quotes at "
                                   f"column 2) (and at least 19 more bad row(s), line(s) "
                                   f"{', '.join(map(str, range(3, 22)))}; stopped at the first 20)")
    path.write_text(good, encoding="utf-8")
    for line_number in (2, 23, 24, 25):
        corrupt_line(path, line_number, "{broken")
    with pytest.raises(DataError) as err:
        read_rows(load_task("eprstmt"), path, labelled=True)
    assert one_line(err.value).endswith("(and 3 more bad row(s), line(s) 23, 24, 25)")  # all of them: an exact count


def test_id_that_is_not_an_integer_or_string_is_an_error(eprstmt_copy):
    path = eprstmt_copy / "test.json"
    set_id(path, 4, "id", [1, 2])
    with pytest.raises(DataError) as err:
        read_rows(load_task("eprstmt"), path, labelled=False)
    assert f"{path}:4: field 'id': the row id must be an integer or a string, got [1, 2]" in str(err.value)


@pytest.mark.parametrize("name", TASKS)
def test_every_real_file_loads_with_unique_ids(name, shared_fewclue):
    task = load_task(name)
    folder = shared_fewclue / name
    for file_name in SPLIT_FILES:
        path = folder / file_name
        if not path.is_file():
            assert file_name == "unlabeled.json"  # only some tasks have unlabeled data
            continue
        unlabelled = file_name in ("test.json", "unlabeled.json")
        rows = read_rows(task, path, labelled=not unlabelled, allow_empty=file_name == "unlabeled.json")
        assert len(rows) == line_count(path), path
        assert len({row.id for row in rows}) == len(rows), path
