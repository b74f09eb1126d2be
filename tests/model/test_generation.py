import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.model.generation import GenerationConfig, encode_chats, generate, to_messages

PROMPTS = [
    "Hi",
    "Write a short poem about the sea and the wind over the harbour.",
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times three?"},
    ],
]


def test_encode_chats_left_pads(tiny_qwen_chat) -> None:
    _, tok = tiny_qwen_chat
    enc = encode_chats(tok, PROMPTS)
    mask = enc["attention_mask"]
    assert mask.shape[0] == 3
    # left padding: every row ends with real tokens, padding (0) only at the start
    assert bool((mask[:, -1] == 1).all())
    for row in mask:
        first = int(row.argmax())
        assert bool((row[first:] == 1).all())
    text = tok.decode(enc["input_ids"][2][mask[2].bool()])
    assert text.count("<|im_start|>user") == 2 and text.rstrip().endswith("<|im_start|>assistant")


def test_batched_greedy_equals_one_by_one(tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    cfg = GenerationConfig(max_new_tokens=8, batch_size=3)
    batched = generate(model, tok, PROMPTS, cfg)
    single = [generate(model, tok, [p], GenerationConfig(max_new_tokens=8, batch_size=1))[0] for p in PROMPTS]
    assert batched == single
    assert all(isinstance(s, str) and s for s in batched)


def test_sampling_is_seeded(tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    cfg = GenerationConfig(max_new_tokens=6, do_sample=True, seed=3, temperature=1.5)
    a = generate(model, tok, PROMPTS[:2], cfg)
    b = generate(model, tok, PROMPTS[:2], cfg)
    c = generate(model, tok, PROMPTS[:2], GenerationConfig(max_new_tokens=6, do_sample=True, seed=4, temperature=1.5))
    assert a == b
    assert a != c


def test_eos_stops_generation(tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    # make <|im_end|> overwhelmingly likely: every completion must stop at once (empty text)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = model.lm_head.weight.abs().max() * 0 + 50.0
    outs = generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=5))
    assert outs == ["", "", ""]


def test_bad_input(tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    with pytest.raises(SaesteerError, match="empty prompt list"):
        generate(model, tok, [])
    with pytest.raises(SaesteerError, match="role"):
        to_messages([{"content": "no role"}])
    with pytest.raises(SaesteerError, match=">= 1"):
        generate(model, tok, ["x"], GenerationConfig(max_new_tokens=0))


def test_fast_path_equals_hf_generate_fp32(tiny_qwen_chat) -> None:
    """Greedy tokens of the fast path equal Hugging Face ``generate``'s, stopping at EOS included."""
    from saesteer.model.generation import decode_batch

    model, tok = tiny_qwen_chat
    prompts = [*PROMPTS, "Tell me a story about a dragon who lived under a bridge near the river."]
    enc = encode_chats(tok, prompts)
    assert (enc["attention_mask"] == 0).any()  # left padding in play
    fast = decode_batch(model, tok, enc, GenerationConfig(max_new_tokens=24, fast=True))
    hf = decode_batch(model, tok, enc, GenerationConfig(max_new_tokens=24, fast=False))
    assert torch.equal(fast, hf[:, : fast.shape[1]]) and (hf[:, fast.shape[1] :] == tok.pad_token_id).all()
    # force EOS mid-way in some rows: rows stop at different steps, then carry padding
    eos = tok.eos_token_id
    with torch.no_grad():
        model.lm_head.weight[eos] = 1.5 * model.lm_head.weight[int(fast[0, 3])]  # beats a token row 0 picks
    fast = decode_batch(model, tok, enc, GenerationConfig(max_new_tokens=24, fast=True))
    hf = decode_batch(model, tok, enc, GenerationConfig(max_new_tokens=24, fast=False))
    assert (fast == eos).any()
    assert torch.equal(fast, hf[:, : fast.shape[1]])


def test_fast_path_stop_strings_equal_hf_generate(tiny_qwen_chat) -> None:
    """Stop strings end rows of the fast path at the token ``generate(stop_strings=...)`` ends them at."""
    from saesteer.model.generation import decode_batch

    model, tok = tiny_qwen_chat
    enc = encode_chats(tok, PROMPTS)
    free = decode_batch(model, tok, enc, GenerationConfig(max_new_tokens=16, fast=True))
    # stop strings that random tokens do produce: row 0's text at steps 3-4 and row 1's at step 6
    stops = [tok.decode(free[0, 3:5]).strip() or tok.decode(free[0, 3:5]), tok.decode(free[1, 6:7])]
    stops = [s for s in stops if s]
    fast = decode_batch(model, tok, enc, GenerationConfig(max_new_tokens=16, fast=True), stops)
    hf = decode_batch(model, tok, enc, GenerationConfig(max_new_tokens=16, fast=False), stops)
    assert fast.shape[1] < free.shape[1] or (fast == tok.pad_token_id).any()  # something stopped early
    width = max(fast.shape[1], hf.shape[1])
    pad = tok.pad_token_id
    fast, hf = (torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad) for t in (fast, hf))
    assert torch.equal(fast, hf)


def test_generate_sorts_by_tokens_and_keeps_order(tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    cfg = GenerationConfig(max_new_tokens=5, batch_size=2)
    outs = generate(model, tok, PROMPTS, cfg)
    assert outs == [generate(model, tok, [p], GenerationConfig(max_new_tokens=5, batch_size=1))[0] for p in PROMPTS]


def test_fast_path_equals_hf_generate_on_every_architecture(any_tiny_model) -> None:
    from saesteer.model.decode import decode

    model = any_tiny_model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :2] = 0
    ids[mask == 0] = 0
    fast = decode(model, ids, mask, max_new_tokens=6, eos_ids=[], pad_id=0)
    with torch.no_grad():
        hf = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    assert torch.equal(fast, hf[:, 9:])
