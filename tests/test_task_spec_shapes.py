"""A task file of one's own (``<folder>/task/<name>.yaml``) with a wrong shape stops with one ConfigError naming the
key and what it needs, read through Hydra as train.py reads it; a single text where a list is expected is a list
of one, and YAML's boolean label keys are the labels ``true``/``false`` of the data files."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from datamodules.errors import ConfigError
from datamodules.tasks.rows import read_rows
from datamodules.tasks.task_spec import TaskSpec
from lightning_modules.scoring.patterns import parse_pattern
from tests.conftest import compose_config
from tests.helpers import ROOT
from train import build, instantiate_with

EXAMPLE = ROOT / "examples" / "my_task"


def task_folder(tmp_path: Path, **yaml: str) -> Path:
    """examples/my_task's reviews.yaml with the keys in ``yaml`` replaced by the given YAML text."""
    base = OmegaConf.load(EXAMPLE / "conf" / "task" / "reviews.yaml")
    for key in yaml:
        base.pop(key, None)
    folder = tmp_path / "conf"
    (folder / "task").mkdir(parents=True)
    text = OmegaConf.to_yaml(base) + "".join(f"{key}: {value}\n" for key, value in yaml.items())
    (folder / "task" / "reviews.yaml").write_text(text, encoding="utf-8")
    return folder


def own_task(tmp_path: Path, **yaml: str) -> TaskSpec:
    """``task=reviews`` from the edited task file, composed with the real conf/ and built as train.py builds it."""
    cfg = compose_config([f"hydra.searchpath=[file://{task_folder(tmp_path, **yaml)}]", "task=reviews"],
                         tmp_path / "run")
    return instantiate_with(cfg.task)


@pytest.mark.parametrize(
    "yaml, message",
    [
        ({"labels": "[good, bad]"},
         "task.labels is a list; need a mapping {label as written in the files: its name}"),
        ({"labels": "{good: [好评], bad: 差评}"}, "task.labels.good is a list; need a text"),
        ({"descriptions": "这是一条评论。"}, "task.descriptions is a text; need a mapping {label: one sentence}"),
        ({"verbalizers": "[很好, 很差]"}, "task.verbalizers is a list; need a mapping {set: {label: [words]}}"),
        ({"verbalizers": "{v1: [很好, 很差]}"}, "task.verbalizers.v1 is a list; need a mapping {label: [words]}"),
        ({"verbalizers": "{v1: {good: [很好], bad: [很差]}, v2: {good: '满意, 开心', bad: 失望}}"},
         "task.verbalizers.v2.good='满意, 开心' is one text; write several words as a list [满意, 开心]"),
        ({"patterns": "{a: '{review}{mask}'}"}, "task.patterns is a mapping; need a list of patterns"),
        ({"patterns": "['{review}{mask}', {text: '{mask}。{review}', verbalizers: {v1: {good: {很: 1}}}}]"},
         "task.patterns[1].verbalizers.v1.good is a mapping; need a list of words"),
        ({"patterns": "['{review}{mask}', {text: '{mask}。{review}', verbaliser: {v1: {good: [很]}}}]"},
         "task.patterns[1] has key(s) ['verbaliser']; allowed: ['text', 'verbalizers']"),
        ({"text_fields": "[]"},
         "task.text_fields=[]; need 1 or 2 field names for a classification task (one text, or a sentence pair)"),
        ({"text_fields": "[a, b, c]"},
         "task.text_fields=['a', 'b', 'c']; need 1 or 2 field names for a classification task (one text, or a "
         "sentence pair)"),
        ({"text_fields": "{review: 1}"}, "task.text_fields is a mapping; need a list of field names"),
        ({"text_fields": "[[review]]"}, "task.text_fields[0] is a list; need a field name"),
        ({"id_fields": "[]"}, "task.id_fields=[]; need at least 1 field name"),
    ],
)
def test_a_task_file_of_the_wrong_shape_is_one_config_error_naming_the_key(tmp_path, yaml, message):
    with pytest.raises(ConfigError) as err:
        own_task(tmp_path, **yaml)
    assert str(err.value) == f"task 'reviews': {message}"


def test_a_single_text_where_a_list_is_expected_is_a_list_of_one(tmp_path):
    task = own_task(
        tmp_path, text_fields="review", id_fields="rid", patterns="'{review}这次体验{mask}。'",
        verbalizers="{v1: {good: 满意, bad: [失望, 糟糕]}}",
    )
    assert task.text_fields == ["review"] and task.id_fields == ["rid"]
    assert task.patterns == ["{review}这次体验{mask}。"]
    assert task.verbalizers == {"v1": {"good": ["满意"], "bad": ["失望", "糟糕"]}}  # not 满, 意
    own = own_task(tmp_path / "own", patterns="['{review}{mask}', {text: '{mask}满意。{review}', "
                                              "verbalizers: {v1: {good: 很, bad: 不}}}]")
    assert own.verbalizers_for(1) == {"v1": {"good": ["很"], "bad": ["不"]}}
    assert own.verbalizers_for(0)["v1"] == {"good": ["很好"], "bad": ["很差"]}


def test_boolean_label_keys_are_the_labels_true_and_false_of_the_files(tmp_path):
    task = own_task(
        tmp_path, labels="{true: 好评, false: 差评}", descriptions="{true: 这是一条好评。, false: 这是一条差评。}",
        verbalizers="{v1: {true: [很好], false: [很差]}}",
    )
    assert task.label_list == ["true", "false"]
    assert task.descriptions == {"true": "这是一条好评。", "false": "这是一条差评。"}
    assert task.verbalizers == {"v1": {"true": ["很好"], "false": ["很差"]}}
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"rid": "a", "review": "很好", "rating": true}\n'
                    '{"rid": "b", "review": "很差", "rating": "false"}\n', encoding="utf-8")
    assert [row.label for row in read_rows(task, rows, labelled=True)] == [0, 1]
    direct = TaskSpec(name="toy", text_fields=["s"], labels={False: "否", True: "是"},
                      verbalizers={"v1": {True: ["是"]}})
    assert direct.label_list == ["false", "true"] and direct.verbalizers == {"v1": {"true": ["是"]}}


def test_a_pattern_without_a_text_placeholder_is_refused_naming_it():
    with pytest.raises(ConfigError) as err:
        parse_pattern("总之{mask}。", ["review"], "task.patterns[0]")
    assert str(err.value) == ("task.patterns[0] '总之{mask}。': no text placeholder, so the cloze never sees the "
                              "row; need at least one of ['{review}']")
    chid = parse_pattern("{left}{mask}{right}", ["content", "left", "right"])
    assert [s.kind for s in chid] == ["field", "mask", "field"]


def test_fuzzy_pet_on_a_pattern_without_a_text_placeholder_stops_before_training(tmp_path):
    folder = task_folder(tmp_path, patterns="['{review}这次体验{mask}。', '总之{mask}。']")
    data = EXAMPLE / "data"
    cfg = compose_config([f"hydra.searchpath=[file://{folder}]", "task=reviews", "data=files", "stage=fuzzy_pet",
                          f"data.train={data / 'train.csv'}", f"data.dev={data / 'dev.jsonl'}", "logger=none"],
                         tmp_path / "run")
    # Every pattern is checked when the stage is built, not only the chosen one (stage.pattern=0).
    with pytest.raises(ConfigError, match=r"^task.patterns\[1\] '总之\{mask\}。': no text placeholder"):
        build(cfg)
