"""The lower half of the Compress & Ask tab: one question answered from IC-Former's vectors, ICAE's
and the full context, streamed token by token from ``ContextCompressor.stream_answer``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import gradio as gr

from icformer.compare import first_token_comparison

from ..presentation import (
    ANSWER_SUBTITLES, GENERATING_HTML, answer_note, ask_headline, floor_note_html, label, not_loaded_banner,
    not_loaded_placeholder, timing_card,
)
from ..results import load_results
from .common import (


    ANSWER_METHODS, COMPRESSORS, Runner, SessionContexts, Tab, Throttle, View, friendly_errors, user_text,
)

QUESTION_MAX_TOKENS = 200
SUGGESTED_BUTTONS = ("suggested_1", "suggested_2", "suggested_3")  # an example's questions, filled by the Compress tab
MAX_NEW_TOKENS = 512  # the API's bound on an answer's length (the page's slider stops at 256)


@dataclass
class AskView(View):
    icformer_answer: Any
    icformer_card: Any
    icae_answer: Any
    icae_card: Any
    full_answer: Any
    full_card: Any
    ask_headline: Any = field(default_factory=gr.skip)
    ask_summary: Any = field(default_factory=gr.skip)
    session: Any = field(default_factory=gr.skip)


class AskSection(Tab):
    """Question, suggested questions, three answer columns with timing cards; Stop keeps what is decoded."""

    def layout(self, context: gr.Textbox, session: gr.State) -> None:
        c = self.c
        c["context"], c["session"] = context, session
        gr.Markdown("### Ask about the compressed context")
        with gr.Row(equal_height=True):
            c["question"] = gr.Textbox(label="Question", placeholder="e.g. Who is the narrator?", scale=6,
                                       elem_id="icf-question")
            c["max_new"] = gr.Slider(8, 256, value=48, step=8, label="max new tokens", scale=2)
            c["ask_btn"] = gr.Button("Ask", variant="primary", scale=1, elem_id="icf-ask")
            c["ask_stop"] = gr.Button("Stop", variant="stop", scale=0, min_width=80, interactive=False,
                                      elem_id="icf-ask-stop")
        with gr.Row():
            for name in SUGGESTED_BUTTONS:
                c[name] = gr.Button(visible=False, size="sm", variant="secondary")
        c["ask_headline"] = gr.HTML(label="headline", show_label=False, elem_id="icf-ask-headline")
        # Read from the committed evaluation: shown while the compressors score near their floors.
        c["floor_note"] = gr.HTML(self.floor_note(), elem_id="icf-floor-note")
        with gr.Row(equal_height=False):
            for m in ANSWER_METHODS:
                with gr.Column(min_width=260):
                    c[f"{m}_answer"] = gr.Textbox(label=f"{label(m)} — {ANSWER_SUBTITLES[m]}", lines=5, max_lines=12,
                                                  interactive=False, elem_id=f"icf-answer-{m}")
                    c[f"{m}_card"] = gr.HTML(label=f"{m} timings", show_label=False, elem_id=f"icf-card-{m}")
        with gr.Accordion("Raw answers (JSON)", open=False):
            c["ask_summary"] = gr.JSON(label="answers")

    def wire(self, run: Runner) -> None:
        c = self.c
        run.run_locked([c["ask_btn"].click, c["question"].submit], self.ask,
                       [c["context"], c["question"], c["max_new"], c["session"]], AskView, c, "ask", "decode",
                       [c["ask_headline"]])

    # ------------------------------------------------------------------ handlers

    def floor_note(self) -> str:
        """The committed evaluation's warning while the compressors score at their floors ("" once above)."""
        return floor_note_html(load_results(self.shared.results_dir))

    @friendly_errors
    def ask(self, text: str, question: str, max_new_tokens: float, state: SessionContexts | None,
            request: gr.Request = None, progress=gr.Progress()) -> Iterator[AskView]:
        """Three answers, streamed one after another; each token is one turn on the shared model."""
        shared = self.shared
        text = shared.context(text)
        question = user_text(question, "question", QUESTION_MAX_TOKENS)
        max_new = int(max(1, min(int(max_new_tokens or 64), MAX_NEW_TOKENS)))
        stop = shared.stop_flag(request)
        texts: dict[str, str] = {}
        cards: dict[str, str] = {}
        answers: dict[str, Any] = {}
        try:
            progress(0.0, desc="Waiting for the model…")
            with shared.service.session(shared.waiter(progress)) as cc:
                state = shared.ensure_contexts(cc, text, state, COMPRESSORS)
                loaded = list(cc.methods())
                # The full context's own embeddings: a lookup, so made per question, not kept in the session.
                sources = dict(state.contexts, full=cc.compress(text, method="full"))
            todo = [m for m in ANSWER_METHODS if m in sources]
            for i, m in enumerate(todo):
                if stop.is_set():
                    break
                progress(i / len(todo), desc=f"Answering from {label(m)}…")
                cards[m], throttle = GENERATING_HTML, Throttle()
                start = lambda cc, z=sources[m]: cc.stream_answer(z, question, max_new_tokens=max_new)  # noqa: E731
                for ans in shared.stream(start, stop):
                    answers[m] = ans
                    if throttle.due():
                        texts[m] = ans.text
                        yield _view(loaded, texts, cards)
                texts[m] = answers[m].text or "(empty answer)"
                cards[m] = timing_card(m, answers[m].timings, answers[m].device, _note(m, answers[m], state))
                yield _view(loaded, texts, cards)
        finally:
            shared.drop_stop(request, stop)
        summary = {
            m: dict(text=ans.text, timings=ans.timings, device=ans.device, trained=ans.trained, stopped=not ans.done,
                    prompt_positions=ans.prompt_positions, peak_memory_bytes=ans.peak_memory_bytes,
                    num_tokens=state.num_tokens)
            for m, ans in answers.items()
        }
        full = answers.get("full")
        comparisons = {m: first_token_comparison(answers[m].timings, full.timings)
                       for m in COMPRESSORS if m in answers and full}
        headline = ask_headline(comparisons, stop.is_set(), shared.reference_for(question, text))
        yield _view(loaded, texts, cards, ask_headline=headline, ask_summary=summary, session=state)


def _note(method: str, ans, state: SessionContexts) -> str:
    z = state.contexts.get(method) if method != "full" else None
    return answer_note(ans, z.num_tokens, z.num_vectors) if z is not None else answer_note(ans)


def _view(loaded: list[str], texts: dict[str, str], cards: dict[str, str], **rest: Any) -> AskView:
    """The three columns so far: a method that is not loaded says how to load it."""
    columns: dict[str, Any] = {}
    for m in ANSWER_METHODS:
        if m in loaded:
            columns[f"{m}_answer"], columns[f"{m}_card"] = texts.get(m, ""), cards.get(m, "")
        else:
            columns[f"{m}_answer"] = gr.update(value="", placeholder=not_loaded_placeholder(m))
            columns[f"{m}_card"] = not_loaded_banner(m)
    return AskView(**columns, **rest)
