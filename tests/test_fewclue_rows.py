"""The data layer on real FewCLUE files: counts, ids, labels, and the errors for bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.tasks.rows import mark_span, read_rows
from datamodules.errors import DataError
from tests.conftest import CONF, TASKS, datamodule_for


def load_task(name: str):
    return instantiate(OmegaConf.load(CONF / "task" / f"{name}.yaml"), _convert_="all")


def line_count(path) -> int:
    return sum(1 for line in open(path, encoding="utf-8") if line.strip())


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("split", ["0", "all"])
def test_every_task_loads_every_row(name, split, shared_fewclue, tmp_path):
    task = load_task(name)
    dm = datamodule_for(name, tmp_path / "run", shared_fewclue, f"data.split={split}")
    dm.setup()
    train_file = "train_few_all.json" if split == "all" else "train_0.json"
    assert len(dm.train_rows) == line_count(shared_fewclue / name / train_file)
    assert len(dm.predict_rows) == line_count(shared_fewclue / name / "test.json")
    assert dm.test_rows is None  # ../shared has no test_public.json on purpose
    assert all(0 <= row.label < task.num_classes for row in dm.train_rows + dm.val_rows)
    # ids are copied from the file with their type, never line numbers
    raw_ids = [json.loads(line).get("id", None) for line in open(shared_fewclue / name / "test.json", encoding="utf-8")]
    assert [row.id for row in dm.predict_rows] == raw_ids


def test_quirks_string_ids_and_idx(shared_fewclue, tmp_path):
    tnews = datamodule_for("tnews", tmp_path / "run", shared_fewclue)
    tnews.setup()
    assert isinstance(tnews.predict_rows[0].id, str) and tnews.predict_rows[0].id == "0"
    assert tnews.task.label_list[tnews.train_rows[0].label] == str(json.loads(open(shared_fewclue / "tnews/train_0.json").readline())["label"])
    wsc = datamodule_for("cluewsc", tmp_path / "run", shared_fewclue)
    wsc.setup()
    first_train = json.loads(open(shared_fewclue / "cluewsc/train_0.json").readline())
    assert wsc.train_rows[0].id == first_train["idx"]
    assert wsc.train_rows[0].fields["span1"] == first_train["target"]["span1_text"]
    # 为什么要出现……，他走到了我的家人中间。: the pronoun at index 30 is bracketed, nothing else moves
    marked, text = wsc.train_rows[0].fields["text_marked"], first_train["text"]
    at = first_train["target"]["span2_index"]
    assert marked == text[:at] + "【" + text[at] + "】" + text[at + 1 :] and len(marked) == len(text) + 2
    chid = datamodule_for("chid", tmp_path / "run", shared_fewclue)
    chid.setup()
    row = chid.train_rows[0]
    assert row.fields["left"] + "#idiom#" + row.fields["right"] == json.loads(open(shared_fewclue / "chid/train_0.json").readline())["content"]


def test_mark_span_brackets_the_occurrence_at_the_index():
    assert mark_span("他说他来了", "他", 2) == "他说【他】来了"  # the second 他, as the index says
    assert mark_span("他说他来了", "他", 4) == "他说【他】来了"  # index off the span: its nearest occurrence
    assert mark_span("他说他来了", "他", 1) == "【他】说他来了"
    assert mark_span("他说他来了", "她", 0) == "他说他来了"  # not in the text: unchanged


@pytest.fixture
def eprstmt_copy(shared_fewclue, tmp_path):
    target = tmp_path / "data" / "eprstmt"
    shutil.copytree(shared_fewclue / "eprstmt", target)
    return target


def corrupt_line(path, line_number: int, new_text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line_number - 1] = new_text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_malformed_json_names_file_and_line(eprstmt_copy):
    path = eprstmt_copy / "train_0.json"
    corrupt_line(path, 7, '{"id": 6, "sentence": "坏掉的行", "label": "Positive"')
    with pytest.raises(DataError, match=rf"{path}:7: malformed JSON"):
        read_rows(load_task("eprstmt"), path, labelled=True)


@pytest.mark.parametrize("indent", [None, 2])
def test_a_file_that_is_one_json_array_says_so_in_one_line(indent, eprstmt_copy):
    """JSON lines are read one object per line: an array of the same rows, on one line or pretty-printed, is refused
    with one line saying what the file is, not as 20 malformed lines."""
    path = eprstmt_copy / "train_0.json"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    path.write_text("\n" + json.dumps(rows, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_rows(load_task("eprstmt"), path, labelled=True)
    assert str(err.value) == (f"1 bad row(s) in {path}:\n  {path}:2: the file is one JSON array; .json/.jsonl files "
                              "are read as JSON lines (one object per line, no enclosing [ ])")
    path.write_text('["a", 1]\n["b", 2]\n', encoding="utf-8")  # JSON lines that are arrays: each line says so
    with pytest.raises(DataError) as err:
        read_rows(load_task("eprstmt"), path, labelled=True)
    assert f"{path}:1: expected a JSON object, got list" in str(err.value) and f"{path}:2:" in str(err.value)


def test_csl_keywords_are_a_list_joined_and_a_list_in_another_field_is_an_error(shared_fewclue, tmp_path):
    path = tmp_path / "train_0.json"
    shutil.copy(shared_fewclue / "csl" / "train_0.json", path)
    path.chmod(0o644)
    raw = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    row = read_rows(load_task("csl"), path, labelled=True)[0]
    assert isinstance(raw["keyword"], list) and row.fields["keyword"] == "，".join(raw["keyword"])
    raw["abst"] = ["第一段。", "第二段。"]
    corrupt_line(path, 1, json.dumps(raw, ensure_ascii=False))
    with pytest.raises(DataError) as err:
        read_rows(load_task("csl"), path, labelled=True)
    assert f"{path}:1: field 'abst': list ['第一段。', '第二段。']; a text (a string) is needed" in str(err.value)


def test_missing_field_names_file_line_and_field(eprstmt_copy):
    path = eprstmt_copy / "train_0.json"
    row = json.loads(path.read_text(encoding="utf-8").splitlines()[2])
    row["sentense"] = row.pop("sentence")
    corrupt_line(path, 3, json.dumps(row, ensure_ascii=False))
    with pytest.raises(DataError, match=rf"{path}:3: missing field 'sentence'"):
        read_rows(load_task("eprstmt"), path, labelled=True)


def test_unknown_label_names_label_and_allowed_set(eprstmt_copy):
    path = eprstmt_copy / "train_0.json"
    row = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    row["label"] = "Neutral"
    corrupt_line(path, 1, json.dumps(row, ensure_ascii=False))
    with pytest.raises(DataError) as err:
        read_rows(load_task("eprstmt"), path, labelled=True)
    assert f"{path}:1: field 'label': unknown label 'Neutral'" in str(err.value)
    assert "allowed: ['Negative', 'Positive']" in str(err.value)


def test_empty_file_is_an_error(eprstmt_copy):
    path = eprstmt_copy / "train_0.json"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}: the file has no rows"):
        read_rows(load_task("eprstmt"), path, labelled=True)


def test_every_bad_line_is_reported_not_just_the_first(eprstmt_copy):
    path = eprstmt_copy / "train_0.json"
    corrupt_line(path, 2, "{broken")
    corrupt_line(path, 5, "{broken")
    with pytest.raises(DataError) as err:
        read_rows(load_task("eprstmt"), path, labelled=True)
    assert f"{path}:2:" in str(err.value) and f"{path}:5:" in str(err.value)


def test_bad_split_name_lists_allowed_values(tmp_path):
    with pytest.raises(DataError, match="allowed: 0, 1, 2, 3, 4, all"):
        datamodule_for("eprstmt", tmp_path / "run", None, "data.split=5")
