"""A checkpointed run folder for the CLI tests (trace, attention), as train writes one."""
import nn
import tensor
from gpt import GPT, GPTConfig
from gpt.bigram import Bigram
from tinygrad_gpt import checkpoint, tokenizer_io
from tokenizer import CharTokenizer


def make_run(folder, model="gpt", text="To be, or not to be\n"):
    """A tiny seeded, untrained GPT (or bigram) with its tokenizer, saved in folder."""
    tok = CharTokenizer.train(text)
    tensor.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2,
                       n_embd=16)
    net = Bigram(config) if model == "bigram" else GPT(config)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.save(folder, net, nn.AdamW(net.parameters()),
                    {"iter": 0, "model_config": config.to_dict(), "model": model})
    tokenizer_io.save(tok, folder / "tokenizer")
    return folder
