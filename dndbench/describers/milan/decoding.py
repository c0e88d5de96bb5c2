"""Decoding descriptions from exemplar features: greedy, beam search (batched over units and
beams) under p(d | E), and MILAN's re-ranking of the beam by weighted PMI
log p(d | E) - λ log p(d)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dndbench.describers.milan.config import Strategy
from dndbench.describers.milan.model import Decoder, LanguageModel, sequence_logp
from dndbench.describers.milan.text import Vocab

STRATEGIES = tuple(Strategy.values())


@dataclass
class Decoded:
    """One unit's candidates, best first: token ids (without ``<bos>``), their texts, their
    log p(d | E) and the ranking score (= log p(d | E) unless re-ranked)."""

    tokens: list[list[int]]
    texts: list[str]
    logp: list[float]
    scores: list[float]


@torch.no_grad()
def greedy(decoder: Decoder, features: torch.Tensor, vocab: Vocab,
           max_length: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax decoding: tokens (B, T) padded with ``<pad>`` after ``<eos>``, log-probs (B,)."""
    b, device = features.shape[0], features.device
    state = decoder.init_state(features)
    current = torch.full((b,), vocab.bos, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    tokens, total = [], torch.zeros(b, device=device)
    for _ in range(max_length):
        logp, state = decoder.step(features, current, state)
        best, current = logp.max(1)
        total += torch.where(done, torch.zeros_like(best), best)
        tokens.append(torch.where(done, torch.full_like(current, vocab.pad), current))
        done |= current == vocab.eos
        if bool(done.all()):
            break
    return torch.stack(tokens, 1), total


@torch.no_grad()
def beam_search(decoder: Decoder, features: torch.Tensor, vocab: Vocab, beam_size: int = 50,
                max_length: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search: tokens (B, K, T) (``<pad>`` after ``<eos>``) and log p(d | E) (B, K), each
    unit's beams sorted best first.  A finished beam keeps its score; at most ``max_length``
    tokens, ``<eos>`` included."""
    b, k, v, device = features.shape[0], beam_size, len(vocab), features.device
    feats = features.repeat_interleave(k, 0)
    h, c = decoder.init_state(feats)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one
    current = torch.full((b * k,), vocab.bos, dtype=torch.long, device=device)
    done = torch.zeros(b, k, dtype=torch.bool, device=device)
    history = torch.zeros(b, k, 0, dtype=torch.long, device=device)
    pad_row = torch.full((v,), float("-inf"), device=device)
    pad_row[vocab.pad] = 0.0
    for _ in range(max_length):
        logp, (h, c) = decoder.step(feats, current, (h, c))
        logp = torch.where(done.view(-1, 1), pad_row, logp)  # finished beams only extend with pad
        total = (scores.view(-1, 1) + logp).view(b, k * v)
        scores, flat = total.topk(k, 1)
        origin, token = flat // v, flat % v
        rows = (origin + torch.arange(b, device=device)[:, None] * k).view(-1)
        h, c, current = h[rows], c[rows], token.view(-1)
        history = torch.cat([history.gather(1, origin[..., None].expand(-1, -1, history.shape[2])),
                             token[..., None]], 2)
        done = done.gather(1, origin) | (token == vocab.eos) | (token == vocab.pad)
        if bool(done.all()):
            break
    return history, scores


@torch.no_grad()
def lm_logp(lm: LanguageModel, tokens: torch.Tensor, vocab: Vocab) -> torch.Tensor:
    """log p(d) (N,) of token sequences (N, T) without ``<bos>`` (``<pad>`` after ``<eos>``)."""
    start = torch.full((len(tokens), 1), vocab.bos, dtype=torch.long, device=tokens.device)
    inputs = torch.cat([start, tokens[:, :-1]], 1)
    return sequence_logp(lm(inputs), tokens, vocab.pad)


def pmi_scores(logp_caption: torch.Tensor, logp_lm: torch.Tensor, temperature: float) -> torch.Tensor:
    """Weighted PMI: log p(d | E) - λ log p(d)."""
    return logp_caption - temperature * logp_lm


def rerank(tokens: torch.Tensor, logp: torch.Tensor, lm_scores: torch.Tensor,
           temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort each unit's beams (B, K, T) by weighted PMI; returns tokens, log p(d | E), PMI."""
    pmi = pmi_scores(logp, lm_scores, temperature)
    pmi = torch.where(torch.isfinite(logp), pmi, torch.full_like(pmi, float("-inf")))
    order = torch.sort(pmi, dim=1, descending=True, stable=True).indices
    pick = order[..., None].expand(-1, -1, tokens.shape[2])
    return tokens.gather(1, pick), logp.gather(1, order), pmi.gather(1, order)


def decode(decoder: Decoder, lm: LanguageModel | None, features: torch.Tensor, vocab: Vocab,
           strategy: str = "rerank", beam_size: int = 50, max_length: int = 15,
           temperature: float = 0.2) -> list[Decoded]:
    """Describe each of the B exemplar sets in ``features`` (B, k, F)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    decoder.eval()
    if strategy == "greedy":
        tokens, logp = greedy(decoder, features, vocab, max_length)
        tokens, logp, scores = tokens[:, None], logp[:, None], logp[:, None]
    else:
        tokens, logp = beam_search(decoder, features, vocab, beam_size, max_length)
        scores = logp
        if strategy == "rerank":
            if lm is None:
                raise ValueError("rerank decoding needs a language model")
            lm.eval()
            flat = lm_logp(lm, tokens.flatten(0, 1), vocab).view(logp.shape)
            tokens, logp, scores = rerank(tokens, logp, flat, temperature)
    out = []
    for i in range(len(tokens)):
        keep = torch.isfinite(logp[i])
        seqs = [[t for t in row if t != vocab.pad] for row in tokens[i][keep].tolist()]
        out.append(Decoded(seqs, [vocab.decode(s) for s in seqs], logp[i][keep].tolist(),
                           scores[i][keep].tolist()))
    return out
