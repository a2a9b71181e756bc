"""Fast batched decoding: a static KV cache, one prefill per batch, and a decode step replayed as a CUDA graph.

    from training.engine.decode import decoder_for
    tokens = decoder_for(model).generate(input_ids, attention_mask, max_new_tokens=256, temperature=1.0, top_p=0.95,
                                         eos_token_id=eos, pad_token_id=pad, seed=7)   # (batch, steps) on the CPU

`prefloop generate --engine static` (the default on a GPU) samples through this; bench/gen_throughput.py measures it
against transformers' `generate`. The model is a plain transformers causal LM (not Unsloth's patched one) with SDPA
attention and no sliding-window layers, on any device; CUDA graphs are used on a GPU, the same Python loop runs eagerly
elsewhere (what the CPU tests check against `generate`).

How a batch runs. Prompts come left-padded, as tokenizers pad for generation. The cache has a fixed number of slots,
the longest prompt plus `max_new_tokens`, rounded up so later batches can reuse it: slot j of row b holds the
key/value of the token at column j, so padding occupies slots a mask leaves out. The prefill writes the prompts to
slots [0, P) and picks the first token; each decode step feeds the last token at slot P + t with position id
(prompt length + t), exactly the positions `generate` gives, attends to the row's real slots up to its own, and picks
the next token on the GPU (argmax, or temperature + top-p by inverting the CDF at a uniform number drawn up front from
a generator seeded with `seed`). Rows that have produced EOS emit the pad token from then on. Nothing in the step reads
a value back to the host, so it is captured once as a CUDA graph and replayed; only every `check_every` steps does the
host ask whether all rows have finished.

Attention during decode: grouped-query models (SmolLM2: 9 query heads over 3 key/value heads) would have transformers'
SDPA path copy every cached key and value once per query head (`repeat_kv`) at every step, because it passes a mask.
`grouped_decode_attention` instead folds the query heads that share a key/value head into SDPA's query-length axis, so
the cache is read once per step, unexpanded; prefill uses transformers' SDPA function unchanged.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

GROUPED_ATTENTION = "prefloop_grouped_sdpa"
CACHE_SLOT_MULTIPLE = 64  # cache lengths are rounded up to this, so batches with similar prompts share one graph
WARMUP_STEPS = 3  # eager steps before capture: cuBLAS handles and kernel choices are made outside the graph


class DecodeError(RuntimeError):
    """The static decoder cannot run this model or this request; the message says what to use instead."""


def grouped_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA attention, except for one-token queries of a grouped-query model: those attend to the
    cache as it is, with the query heads of each key/value group stacked where SDPA expects query positions (they
    all sit at the same position, so one (batch, 1, 1, slots) mask serves them all)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, head_dim = query.shape
    kv_heads = key.shape[1]
    if length != 1 or heads == kv_heads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    # Query head h = g * group + r reads key/value head g (transformers' repeat_kv order).
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    output = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return output.reshape(batch, 1, heads, head_dim), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(GROUPED_ATTENTION, grouped_decode_attention)


def sample_top_p(logits: torch.Tensor, uniform: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row from softmax(logits / temperature) cut to its top-p nucleus, chosen by inverting the CDF
    at `uniform` (one number in [0, 1) per row). The nucleus is the one transformers' TopPLogitsWarper keeps: the most
    probable tokens until the mass before the next one reaches top_p."""
    probs = torch.softmax(logits / temperature, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        outside = probs.cumsum(dim=-1) - probs >= top_p
        probs = probs.masked_fill(outside, 0.0)
    cdf = probs.cumsum(dim=-1)
    # right=True: the first token whose CDF exceeds the target, so a token of probability 0 is never chosen.
    picks = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True)
    if order is None:
        return picks.clamp_(max=probs.shape[-1] - 1).squeeze(1)
    # Rounding can put the target at the CDF's very end; the last nucleus token is the right answer then.
    kept = (~outside).sum(dim=-1, keepdim=True)
    return order.gather(-1, torch.minimum(picks, kept - 1)).squeeze(1)


def length_buckets(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices into `lengths` grouped in batches of `batch_size`, longest first, so each batch pads little and the
    first batch sizes the cache for all later ones."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class StaticDecoder:
    """Generates for left-padded batches of one model with a preallocated cache and, on a GPU, a captured decode step.

    The cache and the graph are sized by the first batch (rows, slots, sampling settings) and rebuilt when a batch
    does not fit: other settings, more rows or fewer than half as many, or a longer prompt than the slots leave room
    for. A batch with somewhat fewer rows (a run's last) fills the rest with finished copies of its last row.
    """

    def __init__(self, model, cuda_graphs: bool | None = None, check_every: int | None = None):
        config = model.config
        if getattr(config, "is_encoder_decoder", False):
            raise DecodeError("the static decoder runs decoder-only models; use engine 'hf' for encoder-decoders")
        if config._attn_implementation != "sdpa":
            raise DecodeError(
                f"the static decoder needs SDPA attention, the model uses {config._attn_implementation!r}: "
                "load it with attn_implementation='sdpa' or use engine 'hf'"
            )
        if hasattr(model, "peft_config"):
            raise DecodeError("merge the LoRA adapter first (load_for_generation does): the decoder runs plain models")
        if any((getattr(type(m).forward, "__module__", None) or "").startswith("unsloth") for m in model.modules()):
            raise DecodeError(
                "Unsloth has replaced this process's transformers model code (it patches the classes when it loads a "
                "model); the static decoder needs transformers' own: use engine 'hf', or a process without Unsloth"
            )
        self.model = model
        self.device = next(model.parameters()).device
        on_gpu = self.device.type == "cuda"
        self.cuda_graphs = on_gpu if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not on_gpu:
            raise DecodeError(f"CUDA graphs need the model on a CUDA device, it is on {self.device}")
        # Asking the GPU whether every row finished waits for it; every 8 steps costs at most 7 wasted steps a batch.
        self.check_every = check_every or (8 if on_gpu else 1)
        self.shape: tuple | None = None  # (rows, slots, new tokens, greedy, temperature, top_p, eos, pad)
        self.graph = None
        self.capture_seconds = 0.0  # total time spent capturing graphs (warm-up steps included)
        self.captures = 0
        _register_attention()

    # --- public -------------------------------------------------------------------------------------------------

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        *,
        greedy: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        eos_token_id: int | None = None,
        pad_token_id: int,
        seed: int = 0,
    ) -> torch.Tensor:
        """The new tokens of every row, (rows, steps) on the CPU: steps is max_new_tokens, or fewer when every row
        produced `eos_token_id` earlier (None: never stop). After its EOS a row holds `pad_token_id`."""
        settings = (max_new_tokens, greedy, float(temperature), float(top_p), eos_token_id, pad_token_id)
        with torch.no_grad(), self._grouped_attention():
            self.start(input_ids, attention_mask, settings, seed)
            done = 1
            while done < max_new_tokens:
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self.decode_step()
                done += 1
                if eos_token_id is not None and done % self.check_every == 0 and bool(self.finished.all()):
                    break
            # A copy (on a CPU model too): the buffer serves the next batch.
            return self.out[: input_ids.shape[0], :done].to("cpu", copy=True)

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: tuple, seed: int) -> None:
        """Size (or reuse) the cache and graph for this batch, run the prefill and pick the first token. `settings`
        is (max_new_tokens, greedy, temperature, top_p, eos_token_id, pad_token_id)."""
        max_new_tokens, greedy, temperature, top_p = settings[:4]
        if max_new_tokens < 1:
            raise DecodeError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        if not greedy and not (temperature > 0 and 0 < top_p <= 1):
            raise DecodeError(f"sampling needs temperature > 0 and top_p in (0, 1], not {temperature} and {top_p}")
        if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
            raise DecodeError(f"input_ids {tuple(input_ids.shape)} and attention_mask must be the same 2-D shape")
        if bool((attention_mask[:, -1] == 0).any()):
            raise DecodeError("prompts must be left-padded (tokenizer.padding_side = 'left')")
        rows, prompt_length = input_ids.shape
        fits = (
            self.shape is not None
            and self.shape[2:] == settings
            and rows <= self.shape[0] < 2 * rows
            and prompt_length + max_new_tokens <= self.shape[1]
        )
        if not fits:
            slots = -(-(prompt_length + max_new_tokens) // CACHE_SLOT_MULTIPLE) * CACHE_SLOT_MULTIPLE
            self._build((rows, slots, *settings))
        self._prefill(input_ids.to(self.device), attention_mask.to(self.device), seed)

    def decode_step(self) -> None:
        """Feed each row's last token at the next cache slot and append the token it picks (the captured step)."""
        mask = (self.valid & (self.slot_index <= self.slot))[:, None, None, :]
        logits = self.model(
            input_ids=self.tokens,
            position_ids=self.positions,
            attention_mask=mask,
            past_key_values=self.cache,
            use_cache=True,
        ).logits
        self._emit(logits[:, -1])
        self.positions.add_(1)
        self.slot.add_(1)

    # --- internals ----------------------------------------------------------------------------------------------

    @contextmanager
    def _grouped_attention(self):
        # The attention layers look the function up by this name on every call; a captured graph no longer does.
        config = self.model.config
        previous = config._attn_implementation
        config._attn_implementation = GROUPED_ATTENTION
        try:
            yield
        finally:
            config._attn_implementation = previous

    def _build(self, shape: tuple) -> None:
        from transformers import StaticCache

        self.graph = self.cache = None  # release the previous graph's memory before allocating the next
        rows, slots, new_tokens = shape[:3]
        config = self.model.config.get_text_config(decoder=True)
        cache = StaticCache(config=config, max_cache_len=slots)
        if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
            raise DecodeError("the static decoder does not handle sliding-window attention layers; use engine 'hf'")
        heads = config.num_attention_heads
        cache.early_initialization(
            batch_size=rows,
            num_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            dtype=self.model.dtype,
            device=self.device,
        )
        device, long = self.device, torch.long
        self.cache = cache
        self.tokens = torch.zeros(rows, 1, dtype=long, device=device)  # the token each row feeds next
        self.positions = torch.zeros(rows, 1, dtype=long, device=device)  # its position id
        self.slot = torch.zeros(1, dtype=long, device=device)  # the cache slot it goes to (same for every row)
        self.slot_index = torch.arange(slots, device=device)
        self.valid = torch.ones(rows, slots, dtype=torch.bool, device=device)  # False: a padding slot
        self.step = torch.zeros(1, dtype=long, device=device)  # column of `out` the next token goes to
        self.out = torch.zeros(rows, new_tokens, dtype=long, device=device)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.uniform = torch.zeros(new_tokens, rows, dtype=torch.float32, device=device)  # sampling noise per step
        self.shape = shape
        if self.cuda_graphs:
            self.graph = self._capture()

    def _reset(self) -> None:
        self.cache.reset()
        for buffer in (self.tokens, self.positions, self.slot, self.step, self.out, self.finished):
            buffer.zero_()
        self.valid.fill_(True)

    def _capture(self):
        """The decode step as a CUDA graph, captured on a blank cache (every batch resets it before its prefill)."""
        start = time.perf_counter()
        try:
            with torch.no_grad(), self._grouped_attention():
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(WARMUP_STEPS):
                        self._reset()
                        self.decode_step()
                torch.cuda.current_stream().wait_stream(stream)
                self._reset()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.decode_step()
                torch.cuda.synchronize()
        except Exception as exc:
            self.shape = None  # the next batch must not run on these buffers without a graph
            raise DecodeError(
                f"capturing the decode step as a CUDA graph failed ({type(exc).__name__}: {exc}). Nothing was "
                "generated; use engine 'hf', or StaticDecoder(model, cuda_graphs=False) (bench: --no-graphs) to run "
                "the same steps without a graph, much slower"
            ) from exc
        self.capture_seconds += time.perf_counter() - start
        self.captures += 1
        return graph

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, seed: int) -> None:
        rows, prompt_length = input_ids.shape
        greedy = self.shape[3]
        self._reset()
        if not greedy:
            # Drawn for the batch's own rows only, so a row's samples do not depend on the graph's size.
            generator = torch.Generator(device=self.device).manual_seed(seed)
            self.uniform[:, :rows] = torch.rand(self.uniform.shape[0], rows, generator=generator, device=self.device)
        if rows < self.shape[0]:  # filler rows: copies of the last one, finished from the start
            filler = self.shape[0] - rows
            input_ids = torch.cat([input_ids, input_ids[-1:].expand(filler, -1)])
            attention_mask = torch.cat([attention_mask, attention_mask[-1:].expand(filler, -1)])
            self.finished[rows:] = True
        real = attention_mask.bool()
        self.valid[:, :prompt_length] = real
        # Prompt token i sits in slot i and sees the real slots up to its own; a padding token sees itself only, so
        # no row of the attention is empty (an all-masked row would give NaN keys and values for the padding).
        query_slot = self.slot_index[:prompt_length, None]
        causal = self.slot_index[None, :] <= query_slot
        mask = causal[None] & (self.valid[:, None, :] | (self.slot_index[None, :] == query_slot)[None])
        # Position ids as `generate` makes them: the count of real tokens before, 0 on padding.
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(~real, 0)
        logits = self.model(
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=mask[:, None],
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        self.positions.copy_(positions[:, -1:] + 1)
        self.slot.fill_(prompt_length)
        self._emit(logits[:, -1])

    def _emit(self, logits: torch.Tensor) -> None:
        _, _, _, greedy, temperature, top_p, eos, pad = self.shape
        logits = logits.float()
        if greedy:
            tokens = logits.argmax(dim=-1)
        else:
            tokens = sample_top_p(logits, self.uniform.index_select(0, self.step).squeeze(0), temperature, top_p)
        if eos is not None:
            tokens = tokens.masked_fill(self.finished, pad)
            self.finished.logical_or_(tokens == eos)
        self.out.index_copy_(1, self.step, tokens[:, None])
        self.tokens.copy_(tokens[:, None])
        self.step.add_(1)


def decoder_for(model) -> StaticDecoder:
    """The model's decoder, made on first use and kept on the model, so its cache and graph serve later batches."""
    decoder = getattr(model, "_prefloop_static_decoder", None)
    if decoder is None:
        decoder = StaticDecoder(model)
        model._prefloop_static_decoder = decoder
    return decoder
