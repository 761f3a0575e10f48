"""stage.word_score (sum / mean / calibrated / calibrated_initial) and stage.pooling (words / sets) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from datamodules.errors import ConfigError
from lightning_modules.scoring.verbalizer import adjusted_word_scores, pooled_class_log_probs
from tests.test_fuzzy_pet import _module


def test_mean_divides_by_the_characters_and_calibrated_subtracts_the_prior():
    joint = torch.tensor([[-2.0, -6.0], [-4.0, -3.0]])  # a 1-character and a 3-character word, two rows
    lengths = torch.tensor([1.0, 3.0])
    assert adjusted_word_scores(joint, lengths, "sum").tolist() == joint.tolist()
    assert adjusted_word_scores(joint, lengths, "mean").tolist() == [[-2.0, -2.0], [-4.0, -1.0]]
    prior = torch.tensor([-1.0, -5.0])  # what the pattern alone gives each word
    assert adjusted_word_scores(joint, lengths, "calibrated", prior).tolist() == [[-1.0, -1.0], [-3.0, 2.0]]
    assert adjusted_word_scores(joint, lengths, "calibrated_initial", prior).tolist() == [[-1.0, -1.0], [-3.0, 2.0]]
    with pytest.raises(ConfigError, match=r"stage.word_score='max'; allowed: \['sum', 'mean', 'calibrated', 'calibrated_initial'\]"):
        adjusted_word_scores(joint, lengths, "max")


def test_pooling_sets_averages_each_sets_distribution_so_a_loud_set_cannot_outvote_two():
    # One word per class (A, B) in each of three sets; p(word) chosen so that sets 1 and 2 say A at 0.8 and
    # set 3 says B at 0.6 with much larger word probabilities.
    p = torch.tensor([[0.08, 0.02, 0.08, 0.02, 0.4, 0.6]])
    classes = torch.tensor([0, 1, 0, 1, 0, 1])
    sets = torch.tensor([0, 0, 1, 1, 2, 2])
    words = pooled_class_log_probs(p.log(), classes, sets, 2, "sum_prob", "words").exp()
    # words: A = 0.08 + 0.08 + 0.4 = 0.56, B = 0.02 + 0.02 + 0.6 = 0.64 -> B.
    assert words.tolist()[0] == pytest.approx([0.56 / 1.2, 0.64 / 1.2])
    by_sets = pooled_class_log_probs(p.log(), classes, sets, 2, "sum_prob", "sets").exp()
    # sets: mean of (0.8, 0.2), (0.8, 0.2), (0.4, 0.6) = (2/3, 1/3) -> A.
    assert by_sets.tolist()[0] == pytest.approx([2 / 3, 1 / 3])
    assert by_sets.sum().item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="stage.pooling='max'"):
        pooled_class_log_probs(p.log(), classes, sets, 2, "sum_prob", "max")


def test_the_module_scores_words_per_character_and_against_the_content_free_pattern(make_config):
    torch.manual_seed(0)
    plain, datamodule = _module(make_config, ["task=ocnli"])  # words of 1 and 2 characters
    mean, _ = _module(make_config, ["task=ocnli", "stage.word_score=mean"])
    calibrated, _ = _module(make_config, ["task=ocnli", "stage.word_score=calibrated", "stage.pooling=sets"])
    for module in (mean, calibrated):
        module.load_state_dict(plain.state_dict())
    batch = plain.collate(datamodule.train_rows[:4])
    with torch.no_grad():
        joint = plain.word_scores(batch)
        lengths = plain.word_lengths
        assert sorted(set(lengths.tolist())) == [1.0, 2.0]
        torch.testing.assert_close(mean.word_scores(batch), joint / lengths)
        # The prior by hand: the pattern with every field emptied, each word scored on its own number of masks.
        empty = {name: "" for name in plain.pattern_encoder.fields}
        patterns = plain.pattern_encoder.encode([empty], plain.lengths)
        prior = torch.cat([
            (F.log_softmax(plain(**patterns[n]), -1)[0].gather(1, plain.group_ids[n].T)).sum(0) for n in plain.lengths
        ])
        torch.testing.assert_close(calibrated.content_free_scores(batch), prior)
        scores = calibrated.word_scores(batch)
        torch.testing.assert_close(scores, joint - prior)
        # pooling=sets: the mean of the three sets' own class distributions.
        per_set = [
            F.softmax(torch.stack([torch.logsumexp(scores[:, (calibrated.word_sets == s) & (calibrated.word_classes == c)], -1)
                                   for c in range(3)], -1), -1)
            for s in range(3)
        ]
        torch.testing.assert_close(calibrated.class_log_probs(batch).exp(), torch.stack(per_set).mean(0))
    assert calibrated.results["word_score"] == "calibrated" and calibrated.results["pooling"] == "sets"
    assert math.isfinite(float(scores.sum()))


def test_chid_calibrates_each_rows_candidates_on_an_empty_context(make_config):
    torch.manual_seed(0)
    module, datamodule = _module(make_config, ["task=chid", "stage.word_score=calibrated"])
    batch = module.collate(datamodule.train_rows[:2])
    with torch.no_grad():
        prior = module.content_free_scores(batch)
        assert prior.shape == (2, 7)
        torch.testing.assert_close(module.word_scores(batch), module.joint_scores(batch) - prior)


def content_free_by_hand(module) -> torch.Tensor:
    """The prior by hand, in eval mode: every field emptied, each word scored on its own number of masks."""
    empty = {name: "" for name in module.pattern_encoder.fields}
    patterns = module.pattern_encoder.encode([empty], module.lengths)
    with torch.no_grad():
        return torch.cat([(F.log_softmax(module.eval()(**patterns[n]), -1)[0].gather(1, module.group_ids[n].T)).sum(0)
                          for n in module.lengths])


def test_calibrated_initial_keeps_the_prior_of_the_starting_weights_and_saves_it_with_them(make_config):
    torch.manual_seed(0)
    current, datamodule = _module(make_config, ["task=ocnli", "stage.word_score=calibrated"])
    initial, _ = _module(make_config, ["task=ocnli", "stage.word_score=calibrated_initial"])
    initial.load_state_dict(current.state_dict(), strict=False)  # the same starting weights; the prior is still NaN
    assert initial.initial_prior.isnan().all()
    batch = current.collate(datamodule.train_rows[:4])
    start = content_free_by_hand(current)
    initial.train()  # first computed inside a training step: still without dropout
    with torch.no_grad():
        torch.testing.assert_close(initial.content_free_scores(batch), start)
    initial.eval()

    with torch.no_grad():  # a weight update: the output bias of word 0's first character moves by +2
        for module in (current, initial):
            module.backbone.get_output_embeddings().bias[module.group_ids[1][0, 0]] += 2.0
    moved = content_free_by_hand(current)
    assert moved[0] == pytest.approx(start[0].item() + 2.0, abs=0.05)  # (less the shift of the softmax normaliser)
    with torch.no_grad():
        torch.testing.assert_close(current.content_free_scores(batch), moved)  # calibrated follows the weights
        torch.testing.assert_close(initial.content_free_scores(batch), start)  # calibrated_initial keeps the start's
        torch.testing.assert_close(initial.word_scores(batch), initial.joint_scores(batch) - start)

    state = initial.state_dict()
    torch.testing.assert_close(state["initial_prior"], start)
    restored, _ = _module(make_config, ["task=ocnli", "stage.word_score=calibrated_initial"])
    restored.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(restored.content_free_scores(batch), start)
    assert "initial_prior" not in current.state_dict()  # other word scores' checkpoints are unchanged
