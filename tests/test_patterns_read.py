"""Patterns and label words that read as Chinese: every (pattern, set, class, word) of every task."""

from __future__ import annotations

import pytest

from datamodules.tasks.task_configs import load_task_specs
from datamodules.tasks.task_spec import TaskSpec
from lightning_modules.scoring.patterns import reading_problems, slot_neighbours
from tests.conftest import TASKS


@pytest.mark.parametrize("task", TASKS)
def test_every_filled_pattern_of_every_task_reads_without_a_doubled_character(task):
    (spec,) = load_task_specs([task])
    assert reading_problems(spec) == []


def test_the_check_finds_a_doubled_character_and_an_empty_word():
    spec = TaskSpec(name="toy", kind="classification", text_fields=["sentence1", "sentence2"], label_field="label",
                    submission_file="x.json", labels={"yes": "是", "no": "否"},
                    patterns=["{sentence1}。两句话的关系是{mask}。", {"text": "{mask}吗？{sentence1}",
                              "verbalizers": {"v1": {"yes": ["对"], "no": [" "]}}}],
                    verbalizers={"v1": {"yes": ["是的"], "no": ["不是"]}})
    assert slot_neighbours(spec.patterns[0], ["sentence1", "sentence2"]) == ("是", "。")
    problems = reading_problems(spec)
    assert len(problems) == 2
    assert "'是的' doubles a character at the slot (是[是的]。)" in problems[0]
    assert "pattern 1" in problems[1] and "an empty word" in problems[1]


def test_a_pattern_with_its_own_sets_uses_them_and_the_others_use_the_tasks():
    (eprstmt,) = load_task_specs(["eprstmt"])
    assert eprstmt.patterns[1] == "{mask}满意。{sentence}"
    assert eprstmt.verbalizers_for(1)["v1"] == {"Negative": ["不"], "Positive": ["很"]}
    assert eprstmt.verbalizers_for(0) is eprstmt.verbalizers
    assert {"不", "很", "很好", "很差"} <= set(eprstmt.label_words())


def test_fuzzy_pet_scores_the_chosen_patterns_own_words(make_config):
    from train import build

    module = build(make_config(["stage=fuzzy_pet", "task=eprstmt", "stage.pattern=1"])).module
    assert {w.text for w in module.words.words} == {"不", "很", "不太", "非常", "不够", "相当"}
    assert module.lengths == [1, 2]
