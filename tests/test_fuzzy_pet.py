"""The Fuzzy-PET stage: scoring and loss against hand computations, every task end to end, self-training."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from callbacks.self_training import select_balanced
from datamodules.errors import ConfigError
from lightning_modules.knowledge.masking import IGNORE
from tests.conftest import TASKS
from tests.helpers import read_jsonl
from tests.test_train_finetune import OFFICIAL_LABELS
from train import build, train


def _module(make_config, overrides: list[str]):
    built = build(make_config(["stage=fuzzy_pet", *overrides]))
    return built.module.eval(), built.datamodule


def separate_inputs(module, rows) -> dict[int, dict]:
    """Each word length's own input (one forward pass per length), for scoring by hand."""
    return module.pattern_encoder.encode([row.fields for row in rows], module.lengths)


def training_loss(module, batch) -> torch.Tensor:
    """The cloze training objective without dropout (the module stays in eval mode)."""
    return module.mean_set_loss(module.word_scores(batch), batch["labels"])


def test_fuzzy_training_loss_is_the_mean_over_sets_and_evaluation_averages_the_sets_or_pools_every_word(make_config):
    torch.manual_seed(0)
    module, datamodule = _module(make_config, ["task=ocnli"])  # ocnli's words have 1 and 2 characters
    assert module.lengths == [1, 2] and module.set_names == ["v1", "v2", "v3"]
    rows = datamodule.train_rows[:4]
    batch = module.collate(rows)
    labels = batch["labels"]
    # Scores by hand: each word on the pattern with as many masks as it has characters.
    by_word = {}
    separate = separate_inputs(module, rows)
    for n in module.lengths:
        logp = F.log_softmax(module(**separate[n]), -1)  # [B, n, V]
        for i in module.words.group(n):
            word = module.words.words[i]
            by_word[i] = sum(logp[:, k, t] for k, t in enumerate(word.token_ids))

    def class_probs(indices):
        classes = [module.words.words[i].class_index for i in indices]
        sums = torch.stack([sum(by_word[i].exp() for i, c in zip(indices, classes) if c == k) for k in range(3)], -1)
        return sums / sums.sum(-1, keepdim=True)

    with torch.no_grad():
        per_set = [
            F.nll_loss(class_probs([i for i, w in enumerate(module.words.words) if w.set_name == s]).log(), labels)
            for s in ("v1", "v2", "v3")
        ]
        assert training_loss(module, batch).item() == pytest.approx(torch.stack(per_set).mean().item(), abs=1e-5)
        # stage.pooling=sets (the default): the mean of the three sets' own class distributions.
        assert module.pooling == "sets"
        mean_of_sets = torch.stack([class_probs([i for i, w in enumerate(module.words.words) if w.set_name == s])
                                    for s in ("v1", "v2", "v3")]).mean(0)
        assert module.class_log_probs(batch).exp() == pytest.approx(mean_of_sets, abs=1e-5)
        # stage.pooling=words: every word of every set summed per class.
        module.pooling = "words"
        pooled = class_probs(list(range(len(module.words.words))))
        assert module.class_log_probs(batch).exp() == pytest.approx(pooled, abs=1e-5)


def test_pooled_objective_trains_on_the_distribution_evaluation_scores(make_config):
    """stage.objective=pooled: the training loss is the cross-entropy of p(class) ∝ Σ p(word) over every word of
    the class in every set, the distribution that evaluation scores; per_set averages each set's own."""
    torch.manual_seed(0)
    module, datamodule = _module(make_config, ["task=ocnli", "stage.objective=pooled", "stage.pooling=words"])
    batch = module.collate(datamodule.train_rows[:4])
    for layer in module.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0  # training mode without dropout: the same scores as evaluation
    with torch.no_grad():
        evaluated = module.class_log_probs(batch)
        module.train()
        pooled_loss = module.step(batch).losses["cloze"]
        module.objective = "per_set"
        per_set_loss = module.step(batch).losses["cloze"]
    labels = batch["labels"]
    by_hand = -sum(evaluated[i, labels[i]] for i in range(4)) / 4
    assert pooled_loss.item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert per_set_loss.item() == pytest.approx(training_loss(module.eval(), batch).item(), abs=1e-5)
    assert abs(pooled_loss.item() - per_set_loss.item()) > 1e-4  # two objectives, not one


def test_slots_longest_scores_every_word_on_one_input_with_the_longest_words_masks(make_config):
    torch.manual_seed(0)
    module, datamodule = _module(make_config, ["task=ocnli", "stage.slots=longest", "stage.word_score=calibrated"])
    assert module.lengths == [1, 2] and module.results["slots"] == "longest"
    batch = module.collate(datamodule.train_rows[:3])
    assert batch["patterns"]["num_masks"] == [2]  # one input per row: two [MASK] slots
    assert batch["patterns"]["input_ids"].shape[0] == 3
    with torch.no_grad():
        logp = F.log_softmax(module(**separate_inputs(module, datamodule.train_rows[:3])[2]), -1)  # [B, 2, V]
        by_hand = torch.stack([sum(logp[:, k, t] for k, t in enumerate(module.words.words[i].token_ids))
                               for i in module.word_index], -1)  # 对 (1 character) at slot 0 only
        torch.testing.assert_close(module.joint_scores(batch), by_hand)
        empty = module.pattern_encoder.encode([{name: "" for name in module.pattern_encoder.fields}], [2])[2]
        prior_logp = F.log_softmax(module(**empty), -1)[0]
        prior = torch.stack([sum(prior_logp[k, t] for k, t in enumerate(module.words.words[i].token_ids))
                             for i in module.word_index])
        torch.testing.assert_close(module.word_scores(batch), by_hand - prior)
    calls = []
    handle = module.encoder.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        module.class_log_probs(batch)
    handle.remove()
    assert len(calls) == 1
    exact, _ = _module(make_config, ["task=ocnli"])
    handle = exact.encoder.register_forward_hook(lambda *args: calls.append(2))
    with torch.no_grad():
        exact.class_log_probs(exact.collate(datamodule.train_rows[:3]))
    handle.remove()
    assert calls == [1, 2]  # exact: one pass too, with a copy of each row per word length
    with pytest.raises(ConfigError, match=r"stage.slots='all'; allowed: \['exact', 'longest'\]"):
        _module(make_config, ["task=ocnli", "stage.slots=all"])


def scores_by_separate_passes(module, rows) -> torch.Tensor:
    """[B, W] joint word scores by hand: each word length's own input through the encoder, one pass per length."""
    separate = separate_inputs(module, rows)
    logp = {n: F.log_softmax(module(**separate[n]).float(), -1) for n in module.lengths}
    return torch.stack([sum(logp[len(w.token_ids)][:, k, t] for k, t in enumerate(w.token_ids))
                        for w in (module.words.words[i] for i in module.word_index)], -1)


def calibrated_class_log_probs_by_hand(module, rows) -> torch.Tensor:
    """Class log-probs of word_score=calibrated, pooling=words, sum_prob from separate passes per length."""
    empty = dataclasses.replace(rows[0], fields={name: "" for name in module.pattern_encoder.fields})
    scores = scores_by_separate_passes(module, rows) - scores_by_separate_passes(module, [empty])[0]
    member = torch.log(F.one_hot(module.word_classes, module.task.num_classes).T.float())  # [C, W], -inf off the class
    return F.log_softmax(torch.logsumexp(scores.unsqueeze(1) + member, -1), -1)


def encoder_passes(module, fn) -> list[int]:
    """The number of rows of each encoder pass that ``fn`` runs."""
    calls = []
    handle = module.encoder.register_forward_hook(
        lambda _module, args, kwargs, _output: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        fn()
    finally:
        handle.remove()
    return calls


def test_exact_scoring_runs_every_word_length_in_one_pass_with_the_scores_of_separate_passes(make_config):
    """csldcp's words have 2-6 characters: a batch goes through the encoder once, its rows copied with 2, 3, 4, 5 and
    6 masks, and scores (calibrated against the content-free prior, itself one pass) as one pass per length would."""
    torch.manual_seed(0)
    module, datamodule = _module(make_config, ["task=csldcp", "stage.word_score=calibrated"])
    assert module.lengths == [2, 3, 4, 5, 6]
    rows = datamodule.train_rows[:6]
    batch = module.collate(rows)
    stacked = batch["patterns"]
    assert stacked["num_masks"] == [2, 3, 4, 5, 6] and stacked["input_ids"].shape[0] == 30
    separate = separate_inputs(module, rows)
    for k, n in enumerate(module.lengths):  # each group: its own input, padded to the common width
        own = separate[n]["input_ids"]
        assert torch.equal(stacked["input_ids"][6 * k : 6 * k + 6, : own.shape[1]], own)
        assert (stacked["attention_mask"][6 * k : 6 * k + 6, own.shape[1] :] == 0).all()
        assert torch.equal(stacked["mask_positions"][6 * k : 6 * k + 6, :n], separate[n]["mask_positions"])
    with torch.no_grad():
        passes = encoder_passes(module, lambda: module.class_log_probs(batch))
        assert passes == [5, 30]  # the prior (one empty row, 5 copies), then the batch: 2 passes, not 10
        torch.testing.assert_close(module.class_log_probs(batch), calibrated_class_log_probs_by_hand(module, rows),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(module.joint_scores(batch), scores_by_separate_passes(module, rows), atol=1e-5, rtol=1e-5)
    # Training: the loss and its gradients are those of separate passes (eval mode: no dropout noise).
    module.word_score = "sum"
    loss = training_loss(module, batch)
    loss.backward()
    one_pass = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    module.zero_grad()
    by_hand = module.mean_set_loss(scores_by_separate_passes(module, rows), batch["labels"])
    by_hand.backward()
    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert one_pass.keys() == {name for name, p in module.named_parameters() if p.grad is not None}
    for name, p in module.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(one_pass[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_exact_one_pass_scores_real_tnews_rows_as_separate_passes_with_the_shared_encoder(make_config):
    """The shared pretrained encoder on tnews dev rows (words of 2, 3 and 4 characters): the class log-probs of the
    one stacked pass are those of one pass per length, under sum and calibrated word scores."""
    encoder = Path(os.environ.get("ZH_MLM_SMALL", ""))
    if not (encoder / "config.json").is_file():
        pytest.skip("the shared encoder is not found; set ZH_MLM_SMALL")
    module, datamodule = _module(make_config, ["task=tnews", "model=hf", f"model.pretrained={encoder}",
                                               "stage.word_score=calibrated", "stage.pooling=words"])
    assert module.lengths == [2, 3, 4]
    rows = datamodule.val_rows[:8]
    batch = module.collate(rows)
    with torch.no_grad():
        torch.testing.assert_close(module.class_log_probs(batch), calibrated_class_log_probs_by_hand(module, rows),
                                   atol=1e-4, rtol=1e-4)
        module.word_score = "sum"
        member = torch.log(F.one_hot(module.word_classes, module.task.num_classes).T.float())
        by_hand = F.log_softmax(torch.logsumexp(scores_by_separate_passes(module, rows).unsqueeze(1) + member, -1), -1)
        torch.testing.assert_close(module.class_log_probs(batch), by_hand, atol=1e-4, rtol=1e-4)


def test_verbalizer_v1_scores_only_v1_words(make_config):
    module, datamodule = _module(make_config, ["task=ocnli", "verbalizer=v1"])
    assert module.set_names == ["v1"] and module.lengths == [2]
    assert [module.words.words[i].text for i in module.word_index] == ["是的", "可能", "不是"]
    batch = module.collate(datamodule.val_rows[:3])
    with torch.no_grad():
        lp = F.log_softmax(module(**separate_inputs(module, datamodule.val_rows[:3])[2]), -1)
        ids = module.group_ids[2]
        words = torch.stack([lp[:, 0, a] + lp[:, 1, b] for a, b in ids.tolist()], -1)
        assert module.class_log_probs(batch) == pytest.approx(F.log_softmax(words, -1), abs=1e-5)
        assert training_loss(module, batch).item() == pytest.approx(F.nll_loss(F.log_softmax(words, -1), batch["labels"]).item(), abs=1e-5)


def test_chid_scores_its_seven_candidates_on_four_masks(make_config):
    module, datamodule = _module(make_config, ["task=chid"])
    rows = datamodule.train_rows[:2]
    batch = module.collate(rows)
    assert batch["patterns"]["num_masks"] == [4] and batch["candidate_ids"].shape == (2, 7, 4)
    ids = batch["patterns"]["input_ids"]
    positions = batch["patterns"]["mask_positions"]
    assert (ids.gather(1, positions) == module.tokenizer.mask_token_id).all()
    with torch.no_grad():
        assert module.class_log_probs(batch).shape == (2, 7)
    lines = module.filled_examples(rows[0])
    assert len(lines) == 7 and rows[0].fields["candidates"][0] in lines[0]


def test_cluewsc_pattern_is_built_from_the_spans_and_debug_shows_one_pattern_per_class(make_config, caplog):
    module, datamodule = _module(make_config, ["task=cluewsc", "stage.debug=true"])
    row = datamodule.train_rows[0]
    lines = module.filled_examples(row)
    span1, span2 = row.fields["span1"], row.fields["span2"]
    assert lines == [
        f"false: {row.fields['text']}这里的“{span2}”不是“{span1}”。",
        f"true: {row.fields['text']}这里的“{span2}”就是“{span1}”。",
    ]
    marked, _ = _module(make_config, ["task=cluewsc", "stage.pattern=2"])
    at, text = row.fields["span2_index"], row.fields["text"]
    assert marked.filled_examples(row)[1] == (
        f"true: {text[:at]}【{span2}】{text[at + len(span2):]}这里的“{span2}”就是“{span1}”。"
    )


def test_bad_stage_settings_name_the_key(make_config):
    with pytest.raises(ConfigError, match=r"stage.pattern=5; allowed: 0..1"):
        _module(make_config, ["task=eprstmt", "stage.pattern=5"])
    with pytest.raises(ConfigError, match=r"stage.aggregation='max'"):
        _module(make_config, ["task=eprstmt", "stage.aggregation=max"])


def test_select_balanced_keeps_each_classs_most_confident_rows_above_the_threshold_capped_per_class():
    probs = torch.tensor([[0.95, 0.05], [0.99, 0.01], [0.2, 0.8], [0.08, 0.92], [0.91, 0.09], [0.6, 0.4]])
    kept, confidence = select_balanced(probs, threshold=0.9, per_class=10)
    # class 0 has 3 rows above 0.9 (1, 0, 4), class 1 one (3); row 2 (class 1 at 0.8) stays out: below the threshold.
    assert kept == [(1, 0), (0, 0), (4, 0), (3, 1)]
    assert confidence.tolist() == pytest.approx([0.99, 0.95, 0.91, 0.92])
    assert select_balanced(probs, 0.9, per_class=2)[0] == [(1, 0), (0, 0), (3, 1)]
    assert select_balanced(probs, 0.99, 10)[0] == [(1, 0)]  # class 1 has no row at 0.99: it gives none
    assert select_balanced(probs, 0.999, 10)[0] == []


def test_remaining_steps_count_ranks_limits_accumulation_and_max_steps():
    from types import SimpleNamespace

    from callbacks.self_training import remaining_steps

    trainer = SimpleNamespace(world_size=2, limit_train_batches=1.0, accumulate_grad_batches=2, max_epochs=5,
                              current_epoch=1, max_steps=-1, global_step=0)
    # 100 rows / (8 per batch x 2 ranks) = 7 batches, 4 steps per epoch (accumulating 2), 3 epochs left.
    assert remaining_steps(trainer, 100, 8) == 12
    trainer.limit_train_batches = 3  # 3 batches: 2 steps
    assert remaining_steps(trainer, 100, 8) == 6
    trainer.max_epochs, trainer.max_steps, trainer.global_step = None, 20, 15  # no epoch count: max_steps decides
    assert remaining_steps(trainer, 100, 8) == 5


# csldcp (67 classes, words of 2-6 characters: 5 passes) and iflytek (119 classes) predict 3000
# long rows: minutes on 2 CPU cores, so they run with -m slow.
SLOW_TASKS = ("csldcp", "iflytek")


@pytest.mark.parametrize("task", [pytest.param(t, marks=pytest.mark.slow) if t in SLOW_TASKS else t for t in TASKS])
def test_each_task_trains_tests_on_test_public_and_writes_its_leaderboard_file(
    task, make_config, fewclue_with_test_public, shared_fewclue
):
    cfg = make_config(
        ["stage=fuzzy_pet", f"task={task}", "trainer.max_steps=3", "data.batch_size=4", "data.eval_batch_size=128",
         "stage.max_length=96", "data.max_unlabeled=50"],
        fewclue_with_test_public,
    )
    results = train(cfg)
    assert results["test/acc"] is not None and 0.0 <= results["test/acc"] <= 1.0
    assert results["verbalizer"] == "fuzzy" and results["stage"] == "fuzzy_pet"
    if task != "chid":  # each label-word set's own test accuracy, beside the pooled one
        assert all(0.0 <= results[f"test/acc_{name}"] <= 1.0 for name in results["verbalizer_sets"])
    rows = read_jsonl(results["predictions"])
    assert [r["id"] for r in rows] == [r["id"] for r in read_jsonl(shared_fewclue / task / "test.json")]
    if task == "chid":
        assert all(set(r) == {"id", "answer"} and r["answer"] in range(7) for r in rows)
    elif task == "csldcp":
        names = {line.strip() for line in open(shared_fewclue / "csldcp/labels_all.txt", encoding="utf-8")}
        assert {r["label"] for r in rows} <= names
    else:
        assert {r["label"] for r in rows} <= OFFICIAL_LABELS[task]


def test_self_training_keeps_pseudo_labels_and_reports_them(make_config):
    cfg = make_config([
        "stage=fuzzy_pet", "task=eprstmt", "trainer.max_epochs=2", "data.batch_size=16", "trainer.limit_predict_batches=1",
        "callbacks.self_training.rounds=1", "callbacks.self_training.epochs_per_round=1", "data.max_unlabeled=64",
        "callbacks.self_training.threshold=0.0", "callbacks.self_training.per_class=8",
    ])
    results = train(cfg)
    (entry,) = results["self_training"]
    assert entry["round"] == 1 and entry["scored"] == 64
    # Each class's 8 most confident rows (threshold 0: every row qualifies); a class the tiny model
    # predicts for fewer rows gives what it has.
    assert 8 <= entry["kept"] <= 16 and sum(entry["kept_per_class"].values()) == entry["kept"]
    assert max(entry["kept_per_class"].values()) == 8 and set(entry["kept_per_class"]) == {"Positive", "Negative"}
    assert entry["kept"] == 0 or 0.5 <= entry["confidence"] <= 1.0
    # epoch 1: 32 rows in batches of 16; epoch 2: 32 + the pseudo-labelled rows.
    assert results["global_step"] == 2 + math.ceil((32 + entry["kept"]) / 16)


def test_unlabeled_rows_never_repeat_an_evaluated_text(make_config):
    _, datamodule = _module(make_config, ["task=eprstmt", "data.max_unlabeled=null"])
    evaluated = {row.fields["sentence"] for row in
                 [*datamodule.val_rows, *datamodule.predict_rows, *datamodule.heldout_rows]}
    rows = datamodule.unlabeled_rows()
    assert not evaluated & {row.fields["sentence"] for row in rows}
    # ../shared's eprstmt unlabeled.json repeats test.json and dev texts word for word (57 rows for split 0), and
    # 10 more of the held-out rows (the other splits' train/dev rows).
    assert datamodule.stats["data/unlabeled_overlap_dropped"] == 67


def test_task_without_unlabeled_data_says_so_and_skips(make_config, caplog, capsys):
    cfg = make_config(["stage=fuzzy_pet", "task=ocnli", "trainer.max_steps=2", "trainer.limit_predict_batches=1",
                       "callbacks.self_training.rounds=2"])
    with caplog.at_level(logging.WARNING):
        results = train(cfg)
    assert "task ocnli has no unlabeled data; self-training skipped" in capsys.readouterr().out
    assert results["self_training"] == [{"skipped": "no unlabeled data"}]


def test_auxiliary_mlm_loss_is_weighted_into_the_training_loss(make_config):
    module, datamodule = _module(make_config, ["task=eprstmt", "stage.mlm_weight=0.25", "data.max_unlabeled=20",
                                               "model.dropout=0.0"])
    module.train()  # the training objective (dropout is off, so the numbers repeat)
    loader = datamodule.train_dataloader()
    assert set(loader) == {"main", "mlm"} and len(loader["mlm"]) == len(loader["main"])
    main = module.collate(datamodule.train_rows[:4])
    aux = next(iter(loader["mlm"]))
    assert module.batch_size(aux) == 8 and (aux["labels"] != IGNORE).any()  # data.mlm_batch_size texts, some masked
    module.log = lambda *args, **kwargs: None  # no trainer to log to
    with torch.no_grad():
        total = module.training_step({"main": main, "mlm": aux}, 0)
        cloze = training_loss(module, main)
        mlm = module.mlm_loss(module.encode(aux["inputs"]), aux["labels"])[0]
    assert mlm.item() > 0 and cloze.item() > 0
    assert total.item() == pytest.approx(0.75 * cloze.item() + 0.25 * mlm.item(), abs=1e-5)


def test_without_mlm_weight_training_batches_are_plain(make_config):
    _, datamodule = _module(make_config, ["task=eprstmt"])
    assert not isinstance(datamodule.train_dataloader(), dict)


def test_verbalizer_takes_any_set_of_the_task_or_a_list_of_them(make_config):
    two, _ = _module(make_config, ["task=ocnli", "verbalizer=[v1,v3]"])
    assert two.set_names == ["v1", "v3"] and two.results["verbalizer"] == "v1+v3"
    assert {two.words.words[i].set_name for i in two.word_index} == {"v1", "v3"}
    with pytest.raises(ConfigError, match=r"set\(s\) \['v9'\] not defined for task 'ocnli'; allowed: fuzzy \(every set\)"):
        _module(make_config, ["task=ocnli", "verbalizer=v9"])
