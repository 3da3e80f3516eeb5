"""Shared offline fixtures: a tokenizer from a vocab the test writes, and tiny BERT models built from a config."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification, BertTokenizerFast

WORDS = (
    "the a of and to in is was for on with as by at from he she it they we john mary paris london berlin acme corp "
    "bank city river went lives works visited good bad great awful movie film plot actor . , ! ?"
).split()
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread; more only adds synchronisation."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def skip_gc_collect(monkeypatch):
    """`auto_find_batch_size`'s retry loop (accelerate's `find_executable_batch_size`) calls `gc.collect()` several
    times to free device memory: seconds each in this process's large heap, with nothing to free on CPU."""
    import gc

    monkeypatch.setattr(gc, "collect", lambda generation=2: 0)


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # A few word pieces so that some words split into several sub-words.
    pieces = ["lon", "##don", "par", "##is", "##s", "##ed", "##ing"]
    path.write_text("\n".join(specials + WORDS + pieces) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tokenizer(vocab_file):
    return BertTokenizerFast(vocab=vocab_file, do_lower_case=True)


def tiny_config(vocab_size, num_labels, layers=2, hidden=32, heads=2, **kwargs):
    return BertConfig(**{
        "vocab_size": vocab_size, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": 64, "max_position_embeddings": 64, "num_labels": num_labels, **kwargs,
    })


def tiny_token_model(tokenizer, labels=NER_LABELS, layers=2, seed=0, **kwargs):
    torch.manual_seed(seed)
    config = tiny_config(
        len(tokenizer), len(labels), layers=layers,
        id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)}, **kwargs,
    )
    return BertForTokenClassification(config)


def tiny_sequence_model(tokenizer, num_labels=2, layers=2, seed=0, **kwargs):
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(len(tokenizer), num_labels, layers=layers, **kwargs))


@pytest.fixture(scope="session")
def byte_level_tokenizer_dir(tmp_path_factory):
    """A RoBERTa-style byte-level BPE tokenizer, trained on WORDS and saved with its default add_prefix_space=False."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    folder = tmp_path_factory.mktemp("byte_level")
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator([" ".join(WORDS)] * 5, vocab_size=1000, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    _, merges_path = trainer.save_model(str(folder))
    merges = [tuple(line.split()) for line in open(merges_path).read().splitlines()[1:] if line]
    RobertaTokenizerFast(vocab=trainer.get_vocab(), merges=merges).save_pretrained(folder / "tokenizer")
    return folder / "tokenizer"


def free_port() -> int:
    """A TCP port free right now, for `accelerate launch --main_process_port`: the default (29500) may still be held by
    an earlier launch, or by another job on a shared CI machine."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
