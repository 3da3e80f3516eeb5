"""Text-level perturbations: seeded typos, valid entity swaps, untouched entities, and a budgeted word attack."""

import math
import random

import numpy as np
import pytest
import torch
from conftest import tiny_sequence_model
from datasets import ClassLabel, Dataset, Features, Sequence, Value

from hf_distill.text_attacks import (
    KEYBOARD_NEIGHBOURS,
    attack_accuracy,
    change_case,
    collect_entity_pool,
    entity_mentions,
    greedy_word_attack,
    model_predict_proba,
    perturb_characters,
    perturb_context,
    swap_entities,
    typo,
    word_budget,
)

WORDS = "the acting was surprisingly good and the plot kept me guessing until the very end".split()
TRAIN = [
    (["John", "Smith", "visited", "Paris", "."], ["B-PER", "I-PER", "O", "B-LOC", "O"]),
    (["Mary", "works", "at", "Acme", "Corp", "."], ["B-PER", "O", "O", "B-ORG", "I-ORG", "O"]),
    (["He", "moved", "to", "New", "York", "City"], ["O", "O", "O", "B-LOC", "I-LOC", "I-LOC"]),
    (["Ada", "Lovelace", "met", "John", "Smith"], ["B-PER", "I-PER", "O", "B-PER", "I-PER"]),
]


def _is_valid_iob2(tags):
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


# ---- typos --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, check",
    [
        ("swap", lambda w, t: len(t) == len(w) and sorted(t) == sorted(w)),
        ("delete", lambda w, t: len(t) == len(w) - 1),
        ("insert", lambda w, t: len(t) == len(w) + 1),
        ("keyboard", lambda w, t: len(t) == len(w) and sum(a != b for a, b in zip(w, t, strict=True)) == 1),
    ],
)
def test_each_typo_kind_changes_the_word_as_described(kind, check):
    rng = random.Random(0)
    for word in ("house", "Paris", "ab", "bookkeeper"):
        perturbed = typo(word, rng, kinds=(kind,))
        assert perturbed != word and check(word, perturbed), (word, perturbed)


def test_a_swap_only_exchanges_different_neighbours():
    # "aab" has one swap that changes it ("a" with "b"); swapping the two "a"s would leave the word as it was.
    assert {typo("aab", random.Random(seed), kinds=("swap",)) for seed in range(50)} == {"aba"}


def test_keyboard_typos_use_neighbouring_keys_and_keep_case():
    rng = random.Random(1)
    for _ in range(20):
        perturbed = typo("S", rng, kinds=("keyboard",))
        assert perturbed.isupper() and perturbed.lower() in KEYBOARD_NEIGHBOURS["s"]
    assert set(KEYBOARD_NEIGHBOURS["s"]) == set("adwezx")
    assert all(key in KEYBOARD_NEIGHBOURS[n] for key, near in KEYBOARD_NEIGHBOURS.items() for n in near)


def test_short_and_unchangeable_words_are_handled():
    rng = random.Random(0)
    assert typo("", rng) == ""
    assert typo("a", rng, kinds=("swap", "delete")) == "a"  # no swap in one character, no delete to nothing
    assert typo("aa", rng, kinds=("swap",)) == "aa"
    assert typo("!", rng, kinds=("keyboard",)) == "!"
    assert typo("a", rng, kinds=("keyboard",)) in set(KEYBOARD_NEIGHBOURS["a"])


def test_perturb_characters_touches_the_requested_fraction_of_eligible_words():
    words = WORDS + [".", "!"]
    perturbed = perturb_characters(words, 0.25, random.Random(0))
    changed = [i for i, (a, b) in enumerate(zip(words, perturbed, strict=True)) if a != b]
    assert len(perturbed) == len(words)
    assert len(changed) == math.floor(0.25 * len(WORDS) + 0.5)
    assert words[-2:] == perturbed[-2:]  # punctuation is not eligible
    one = perturb_characters(words, 0.01, random.Random(0))
    assert sum(a != b for a, b in zip(words, one, strict=True)) == 1  # at least one word when rate > 0
    assert perturb_characters(words, 0.0, random.Random(0)) == words
    assert perturb_characters([".", "a"], 1.0, random.Random(0)) == [".", "a"]


def test_perturbations_are_deterministic_for_a_seed():
    assert perturb_characters(WORDS, 0.5, 7) == perturb_characters(WORDS, 0.5, random.Random(7))
    outputs = {tuple(perturb_characters(WORDS, 0.5, seed)) for seed in range(5)}
    assert len(outputs) > 1
    assert change_case(WORDS, 3, rate=0.5) == change_case(WORDS, 3, rate=0.5)
    assert change_case(WORDS, 3, rate=0.5) != change_case(WORDS, 4, rate=0.5)


def test_change_case_only_recases():
    cased = change_case(["Paris", "is", "big", "."], random.Random(0))
    assert [w.lower() for w in cased] == ["paris", "is", "big", "."]
    assert all(a != b for a, b in zip(["Paris", "is", "big"], cased[:3], strict=True))
    assert change_case(["paris"], 0, styles=("upper",)) == ["PARIS"]


def test_invalid_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"`rate` must be in \[0, 1\], got 1.5"):
        perturb_characters(WORDS, 1.5, 0)
    with pytest.raises(ValueError, match="`kinds` must be a non-empty subset"):
        typo("word", 0, kinds=("transpose",))
    with pytest.raises(TypeError, match="random.Random or an int seed"):
        typo("word", None)


# ---- NER ------------------------------------------------------------------------------------------------------------


def test_entity_mentions_from_iob2():
    tokens, tags = TRAIN[0]
    assert entity_mentions(tokens, tags) == [(0, 2, "PER"), (3, 4, "LOC")]
    assert entity_mentions(["a", "b", "c"], ["I-PER", "B-PER", "I-LOC"]) == [
        (0, 1, "PER"),
        (1, 2, "PER"),
        (2, 3, "LOC"),
    ]
    with pytest.raises(ValueError, match="not an IOB2 tag string"):
        entity_mentions(["a"], [3])
    with pytest.raises(ValueError, match="2 tokens but 1 tags"):
        entity_mentions(["a", "b"], ["O"])


def test_entity_pool_from_rows_and_from_a_classlabel_dataset():
    pool = collect_entity_pool({"tokens": t, "ner_tags": g} for t, g in TRAIN)
    assert pool == {
        "PER": [("John", "Smith"), ("Mary",), ("Ada", "Lovelace")],
        "LOC": [("Paris",), ("New", "York", "City")],
        "ORG": [("Acme", "Corp")],
    }
    names = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))})
    dataset = Dataset.from_dict(
        {"tokens": [t for t, _ in TRAIN], "ner_tags": [[names.index(x) for x in g] for _, g in TRAIN]},
        features=features,
    )
    assert collect_entity_pool(dataset) == pool
    with pytest.raises(ValueError, match="pass `label_names`"):
        collect_entity_pool([{"tokens": ["a"], "ner_tags": [0]}])


def test_swapped_entities_keep_valid_tags_and_types():
    pool = collect_entity_pool({"tokens": t, "ner_tags": g} for t, g in TRAIN)
    tokens, tags = (
        ["Mary", "flew", "from", "Paris", "to", "New", "York", "City"],
        [
            "B-PER",
            "O",
            "O",
            "B-LOC",
            "O",
            "B-LOC",
            "I-LOC",
            "I-LOC",
        ],
    )
    for seed in range(10):
        new_tokens, new_tags = swap_entities(tokens, tags, pool, seed)
        assert len(new_tokens) == len(new_tags) and _is_valid_iob2(new_tags)
        old, new = entity_mentions(tokens, tags), entity_mentions(new_tokens, new_tags)
        assert [m[2] for m in new] == [m[2] for m in old]
        for (s0, e0, _), (s1, e1, kind) in zip(old, new, strict=True):
            assert tuple(new_tokens[s1:e1]) in pool[kind] and new_tokens[s1:e1] != tokens[s0:e0]
        assert [w for w, t in zip(new_tokens, new_tags, strict=True) if t == "O"] == ["flew", "from", "to"]
    assert swap_entities(tokens, tags, pool, 3) == swap_entities(tokens, tags, pool, 3)


def test_mentions_without_an_alternative_are_kept():
    tokens, tags = ["Acme", "Corp", "rocks"], ["B-ORG", "I-ORG", "O"]
    assert swap_entities(tokens, tags, {"ORG": [("Acme", "Corp")]}, 0) == (tokens, tags)
    assert swap_entities(tokens, tags, {}, 0) == (tokens, tags)


def test_context_perturbation_leaves_entities_identical():
    tokens = ["Mary", "Jones", "visited", "beautiful", "Paris", "and", "walked", "around", "Acme", "Corp"]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "O", "O", "B-ORG", "I-ORG"]
    for seed in range(10):
        new_tokens, new_tags = perturb_context(tokens, tags, 1.0, seed)
        assert new_tags == tags
        assert all(new == old for new, old, tag in zip(new_tokens, tokens, tags, strict=True) if tag != "O")
        assert all(new != old for new, old, tag in zip(new_tokens, tokens, tags, strict=True) if tag == "O")


# ---- black-box word attack --------------------------------------------------------------------------------------------


def never_flips(texts):
    """True class 0 loses a little probability for every word not in WORDS, but always keeps the majority."""
    known = set(WORDS)
    unknown = np.array([sum(w not in known for w in text) for text in texts], dtype=float)
    p0 = 0.9 - 0.01 * unknown
    return np.stack([p0, 1 - p0], axis=1)


def keyed_on_good(texts):
    """Class 0 exactly when the word "good" is present, and it is fairly confident either way."""
    return np.array([[0.8, 0.2] if "good" in text else [0.3, 0.7] for text in texts])


def test_attack_never_exceeds_its_budget():
    outcome = greedy_word_attack(never_flips, WORDS, 0, budget=0.3, rng=0)
    assert not outcome["success"]
    assert outcome["perturbed"] == math.floor(0.3 * len(WORDS)) == word_budget(0.3, len(WORDS))
    assert sum(a != b for a, b in zip(WORDS, outcome["words"], strict=True)) == outcome["perturbed"]
    assert len(outcome["words"]) == len(WORDS)


def test_attack_stops_as_soon_as_the_prediction_flips():
    outcome = greedy_word_attack(keyed_on_good, WORDS, 0, budget=0.5, rng=0)
    assert outcome["success"] and outcome["perturbed"] == 1
    changed = [(a, b) for a, b in zip(WORDS, outcome["words"], strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0] == "good"  # the most important word is attacked first
    # 1 clean query, one deletion per word, then at most 3 typos of "good".
    assert 1 + len(WORDS) < outcome["queries"] <= 1 + len(WORDS) + 3


def test_attack_leaves_punctuation_and_single_letters_alone():
    def keyed_on_punctuation(texts):  # class 0 exactly while the text holds "." and "a"
        return np.array([[0.8, 0.2] if "." in text and "a" in text else [0.3, 0.7] for text in texts])

    words = ["a", "fine", "film", "."]
    outcome = greedy_word_attack(keyed_on_punctuation, words, 0, budget=1.0, rng=0)
    assert not outcome["success"] and outcome["words"] == words and outcome["perturbed"] == 0


def test_attack_skips_texts_already_misclassified_and_zero_budget():
    outcome = greedy_word_attack(keyed_on_good, WORDS, 1, rng=0)
    assert outcome == {"words": WORDS, "success": False, "perturbed": 0, "queries": 1, "clean_correct": False}
    assert greedy_word_attack(keyed_on_good, WORDS, 0, budget=0.0, rng=0)["perturbed"] == 0


def test_attack_is_deterministic_for_a_seed():
    first = greedy_word_attack(never_flips, WORDS, 0, rng=5)
    assert first == greedy_word_attack(never_flips, WORDS, 0, rng=5)
    assert any(greedy_word_attack(never_flips, WORDS, 0, rng=s)["words"] != first["words"] for s in range(6, 10))


def test_attack_accuracy_counts_flips_over_correct_examples():
    examples = [WORDS, WORDS, "the plot was bad".split(), "good good".split(), "a dull plot".split()]
    results = attack_accuracy(keyed_on_good, examples, [0, 0, 1, 0, 0], budget=0.3, seed=0)
    # The first four are right, the fifth wrong (it has no "good"). Both copies of WORDS flip once "good" is misspelt;
    # no typo can add a "good" to the third, and the fourth may lose only one of its two "good"s (a budget of one
    # word), which does not change its score. Successes count over the four that were right.
    assert results == {"clean_accuracy": 0.8, "attacked_accuracy": 0.4, "attack_success_rate": 0.5}


def test_attack_accuracy_draws_its_typos_from_its_seed():
    def recording(asked):
        def predict_proba(texts):  # never flips: every typo tried is queried
            asked.extend(" ".join(text) for text in texts)
            return np.array([[0.9, 0.1]] * len(texts))
        return predict_proba

    queried = {}
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        queried[run] = []
        attack_accuracy(recording(queried[run]), [["hello", "wonderful", "world"]], [0], budget=1.0, seed=seed)
    assert queried["a"] == queried["b"] != queried["c"]


def test_attack_keeps_a_typo_only_if_it_lowers_the_true_class_below_the_last_kept_one():
    words = ["alpha", "beta", "gamma"]

    def predict_proba(texts):
        out = []
        for text in texts:
            if len(text) == 2:  # deletions rank alpha, then beta, then gamma
                p = {"alpha": 0.5, "beta": 0.8, "gamma": 0.85}[next(w for w in words if w not in text)]
            elif "alpha" in text:
                p = 0.9  # the clean text, or a typo elsewhere that changes nothing
            else:  # alpha's typo lowers the true class to 0.6; beta's on top raises it back to 0.7 (< 0.9, > 0.6)
                p = 0.6 if "beta" in text else 0.7
            out.append([p, 1 - p])
        return np.array(out)

    outcome = greedy_word_attack(predict_proba, words, 0, budget=1.0, rng=0)
    assert outcome["perturbed"] == 1 and outcome["words"][0] != "alpha" and outcome["words"][1:] == ["beta", "gamma"]
    assert not outcome["success"]


class SpyClassifier(torch.nn.Module):
    """A two-class "classifier" that records the `(input_ids, token_type_ids)` of every call and predicts 50/50."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        self.seen.append((input_ids, token_type_ids))
        return SequenceClassifierOutput(logits=torch.zeros(input_ids.shape[0], 2))


def test_model_predict_proba_wraps_a_classifier(tokenizer):
    torch.manual_seed(0)
    model = tiny_sequence_model(tokenizer, layers=1)
    predict_proba = model_predict_proba(model, tokenizer, batch_size=2)
    probabilities = predict_proba([["the", "movie", "was", "good"], ["bad"], ["the", "plot"]])
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert model.training  # the mode is restored
    outcome = greedy_word_attack(predict_proba, ["the", "movie", "was", "good"], 0, rng=0)
    assert outcome["queries"] >= 1


def test_model_predict_proba_refuses_a_token_classifier_and_truncates_to_the_models_positions(tokenizer):
    # A token classifier failed on the shape of its output, blamed on `predict_proba`; a tokenizer that does not know
    # the model's limit let a long text through to the position embeddings, which failed on its size.
    from conftest import tiny_token_model

    with pytest.raises(ValueError, match=r"token classifier \(BertForTokenClassification\); .* need a sequence "
                                         r"classifier"):
        model_predict_proba(tiny_token_model(tokenizer, layers=1), tokenizer)
    model = tiny_sequence_model(tokenizer, layers=1, max_position_embeddings=16)
    assert tokenizer.model_max_length > 16
    probabilities = model_predict_proba(model, tokenizer)([["good"] * 40])
    assert probabilities.shape == (1, 2)


def test_model_predict_proba_reads_words_as_the_running_text(byte_level_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(byte_level_tokenizer_dir)  # byte-level, add_prefix_space=False
    spy = SpyClassifier()
    model_predict_proba(spy, tokenizer)([["john", "went", "to", "london"]])
    assert spy.seen[0][0][0].tolist() == tokenizer("john went to london")["input_ids"]


def test_a_string_where_words_are_expected_is_refused():
    # A str is a sequence of characters: it would be perturbed letter by letter, without an error.
    for call in (lambda: perturb_characters("the movie was good", 0.5, 0),
                 lambda: change_case("the movie was good", 0),
                 lambda: perturb_context("John lives here", ["B-PER", "O", "O"], 0.5, 0)):
        with pytest.raises(TypeError, match=r"list of words.*split\(\)"):
            call()
    tokens, tags = TRAIN[0]
    with pytest.raises(TypeError, match=r"list of words"):
        swap_entities(tokens, tags, {"PER": ["Ann Lee"], "LOC": ["Berlin"]}, 0)


def test_budgets_are_exact_for_decimal_rates():
    # floor(0.7 · 90) = 63 and floor(0.29 · 100) = 29, which float products put one below.
    assert word_budget(0.7, 90) == 63 and word_budget(0.29, 100) == 29 and word_budget(0.3, 10) == 3
    words = [f"word{i}" for i in range(50)]  # 50 eligible words: round(0.29 · 50) = round(14.5) = 15, half up
    assert sum(a != b for a, b in zip(perturb_characters(words, 0.29, 0), words, strict=True)) == 15


def test_model_predict_proba_reads_tuple_outputs_and_restores_modes(tokenizer):
    model = tiny_sequence_model(tokenizer, layers=1)
    model.train()
    model.bert.embeddings.eval()
    expected = model_predict_proba(model, tokenizer)([["a", "b"]])
    assert model.training and not model.bert.embeddings.training
    model.config.return_dict = False
    assert np.array_equal(model_predict_proba(model, tokenizer)([["a", "b"]]), expected)


def test_a_one_word_text_is_attacked_without_querying_an_empty_text():
    def refuses_empty(texts):  # a classifier whose tokenizer adds no special tokens has nothing to read in ""
        assert all(texts), "an empty text was queried"
        return keyed_on_good(texts)

    outcome = greedy_word_attack(refuses_empty, ["good"], 0, budget=1.0, rng=0)
    assert outcome["success"] and outcome["perturbed"] == 1 and outcome["words"] != ["good"]
    assert 1 < outcome["queries"] <= 1 + 3  # the clean query and the typos: one word needs no ranking


def test_model_predict_proba_refuses_a_text_with_no_tokens(tokenizer, vocab_file):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(open(vocab_file).read().split())}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    bare = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")  # GPT-2-like
    assert bare("")["input_ids"] == []
    predict_proba = model_predict_proba(tiny_sequence_model(tokenizer, layers=1), bare)
    assert predict_proba([["a", "good", "movie"]]).shape == (1, 2)
    for texts, index in (([[]], 0), ([["a", "good", "movie"], []], 1)):  # alone, and padded beside a real text
        with pytest.raises(ValueError, match=f"text {index} .*no tokens"):
            predict_proba(texts)


# ---- the word attack on sentence pairs ---------------------------------------------------------------------------------

PREMISE = "a man is playing a good guitar on the stage".split()
HYPOTHESIS = "someone plays music in front of people".split()


def pair_keyed_on_good(texts):
    """Class 0 exactly when either side of the pair holds "good"; every text must be a pair with no empty side."""
    assert all(isinstance(text, tuple) and len(text) == 2 and all(text) for text in texts), texts
    return keyed_on_good([first + second for first, second in texts])


def pair_never_flips(texts):
    """As `never_flips`, for pairs: every misspelt word of either side costs class 0 a little, never the majority."""
    known = set(PREMISE + HYPOTHESIS)
    unknown = np.array([sum(w not in known for w in first + second) for first, second in texts], dtype=float)
    p0 = 0.9 - 0.01 * unknown
    return np.stack([p0, 1 - p0], axis=1)


def test_a_pair_attack_ranks_the_words_of_both_sides_and_returns_a_pair():
    outcome = greedy_word_attack(pair_keyed_on_good, (PREMISE, HYPOTHESIS), 0, budget=0.3, rng=0)
    assert outcome["success"] and outcome["perturbed"] == 1
    first, second = outcome["words"]
    assert second == HYPOTHESIS
    assert [(a, b) for a, b in zip(PREMISE, first, strict=True) if a != b][0][0] == "good"
    # 1 clean query, one deletion per word of either side, then at most 3 typos of "good".
    assert 1 + len(PREMISE) + len(HYPOTHESIS) < outcome["queries"] <= 1 + len(PREMISE) + len(HYPOTHESIS) + 3


def test_a_pair_attack_on_one_side_leaves_the_other_alone_and_budgets_that_side():
    # NLI protocol: only the hypothesis is attacked. "good" is in the premise, so nothing can flip the prediction.
    outcome = greedy_word_attack(pair_keyed_on_good, (PREMISE, HYPOTHESIS), 0, budget=0.5, rng=0,
                                 attack_segments="second")
    assert not outcome["success"] and outcome["words"][0] == PREMISE
    assert outcome["perturbed"] == 0  # no typo of the hypothesis lowers the true class: none is kept
    outcome = greedy_word_attack(pair_never_flips, (PREMISE, HYPOTHESIS), 0, budget=0.5, rng=0,
                                 attack_segments="second")
    assert outcome["words"][0] == PREMISE
    changed = sum(a != b for a, b in zip(HYPOTHESIS, outcome["words"][1], strict=True))
    assert changed == outcome["perturbed"] == word_budget(0.5, len(HYPOTHESIS)) == 3
    both = greedy_word_attack(pair_never_flips, (PREMISE, HYPOTHESIS), 0, budget=0.5, rng=0)
    assert both["perturbed"] == word_budget(0.5, len(PREMISE) + len(HYPOTHESIS)) == 8


def test_a_pair_attack_never_scores_an_empty_side():
    outcome = greedy_word_attack(pair_keyed_on_good, (["good"], ["yes"]), 0, budget=1.0, rng=0)
    assert outcome["success"] and outcome["words"][1] == ["yes"] and outcome["words"][0] != ["good"]
    outcome = greedy_word_attack(pair_keyed_on_good, (["a", "good", "one"], ["yes"]), 0, budget=1.0, rng=0)
    assert outcome["success"] and outcome["words"][1] == ["yes"]


def test_attack_accuracy_attacks_pairs_on_the_side_it_is_told():
    examples = [(PREMISE, HYPOTHESIS), (HYPOTHESIS, PREMISE)]
    assert attack_accuracy(pair_keyed_on_good, examples, [0, 0], budget=0.3, seed=0)["attacked_accuracy"] == 0.0
    second_only = attack_accuracy(pair_keyed_on_good, examples, [0, 0], budget=0.3, seed=0, attack_segments="second")
    assert second_only == {"clean_accuracy": 1.0, "attacked_accuracy": 0.5, "attack_success_rate": 0.5}


def test_choosing_a_side_of_a_single_text_is_refused():
    with pytest.raises(ValueError, match="single list of words"):
        greedy_word_attack(keyed_on_good, WORDS, 0, attack_segments="second")
    with pytest.raises(ValueError, match="attack_segments"):
        greedy_word_attack(pair_keyed_on_good, (PREMISE, HYPOTHESIS), 0, attack_segments="premise")
    with pytest.raises(TypeError, match="pair of them"):
        greedy_word_attack(keyed_on_good, [["a", "b"], "c", "d"], 0)


def test_model_predict_proba_tokenizes_pairs_as_pairs(tokenizer):
    spy = SpyClassifier()
    predict_proba = model_predict_proba(spy, tokenizer, batch_size=1)
    predict_proba([(["the", "movie"], ["was", "good"]), (["bad"], ["the", "plot"])])
    expected = tokenizer("the movie", "was good")
    assert spy.seen[0][0][0].tolist() == expected["input_ids"]
    assert spy.seen[0][1][0].tolist() == expected["token_type_ids"] and 1 in expected["token_type_ids"]
    with pytest.raises(ValueError, match="text 1 is a sentence pair"):  # caught across batches, not per batch
        predict_proba([["the", "movie"], (["bad"], ["plot"])])
    real = model_predict_proba(tiny_sequence_model(tokenizer, layers=1), tokenizer)
    outcome = greedy_word_attack(real, (["the", "movie", "was", "good"], ["bad", "plot"]), 0, budget=1.0, rng=0)
    assert isinstance(outcome["words"], tuple) and outcome["queries"] >= 1
