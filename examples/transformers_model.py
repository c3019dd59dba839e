"""A Hugging Face transformers model with pemn: convert -> train the masks -> save -> load with no code -> dense.

A tiny BERT classifier built from a config (no download) learns a toy task (is the first token's id below 32?)
by training only its mask scores and dense extras. ``pemn.save`` records the model class and config in the file, so
``pemn.load("bert.pemn")`` rebuilds it with no model code; ``save_pretrained`` is refused on the converted model
(transformers would leave the masked weights out), and ``pemn.materialize(model).save_pretrained(dir)`` writes
the dense transformers checkpoint that ``from_pretrained`` reads back exactly.
"""

import warnings

import torch
import transformers

import pemn

transformers.logging.set_verbosity_error()
torch.manual_seed(0)
config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=16, num_labels=2)
model = transformers.BertForSequenceClassification(config)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # a tiny model: pemn would warn about its small prototype
    pemn.convert_(model, pemn.PEMNConfig(strategy="rp", ratio=0.05, keep=0.5, seed=0))

g = torch.Generator().manual_seed(0)
ids = torch.randint(1, 64, (768, 8), generator=g)
labels = (ids[:, 0] < 32).long()
train, test = slice(0, 512), slice(512, 768)


def accuracy(m: torch.nn.Module) -> float:
    m.eval()
    with torch.no_grad():
        return float((m(input_ids=ids[test]).logits.argmax(-1) == labels[test]).float().mean()) * 100


print(f"before training: {accuracy(model):.1f} % of 256 held-out sequences")
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
for _ in range(80):  # only the mask scores and the dense extras (norms, biases) train
    model.train()
    batch = torch.randint(0, 512, (64,), generator=g)
    opt.zero_grad()
    model(input_ids=ids[train][batch], labels=labels[train][batch]).loss.backward()
    opt.step()
print(f"after 80 steps: {accuracy(model):.1f} % of 256 held-out sequences")

path = pemn.save(model, "bert.pemn")
s = pemn.summary(path, verbose=False)
print(f"bert.pemn: {s.file_bytes:,} bytes, {s.honest_ratio:.1f}x smaller than the fp32 model")

loaded = pemn.load("bert.pemn")  # no model code: the file records BertForSequenceClassification and its config
model.eval()
loaded.eval()
with torch.no_grad():
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
print(f"pemn.load('bert.pemn') rebuilt a {type(loaded).__name__}: outputs bit-identical")

try:
    model.save_pretrained("bert-hf")
except pemn.ConversionError as e:
    print(f"save_pretrained refused: {str(e)[:80]}...")
pemn.materialize(loaded).save_pretrained("bert-dense")
dense = transformers.BertForSequenceClassification.from_pretrained("bert-dense").eval()
with torch.no_grad():
    assert torch.equal(dense(input_ids=ids).logits, model(input_ids=ids).logits)
print("pemn.materialize(model).save_pretrained('bert-dense'): from_pretrained gives the same outputs")
