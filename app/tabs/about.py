"""The About tab (the method, a diagram, what is loaded, the model profiles, limitations,
citations) and the model status it shares with the banner above the tabs and ``/status``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from icformer.profiles import list_profiles

from .. import about
from ..presentation import model_markdown, profiles_html, status_html
from .common import Runner, Tab, View, listen


@dataclass
class StatusView(View):
    """The banner above the tabs, this tab's two model tables, and the timer (stopped once loaded)."""

    status: str
    about_model: str
    about_profiles: str
    timer: Any


class AboutTab(Tab):
    """Static text about the method, and the loaded model's status (also the banner's and ``/status``)."""

    def layout(self) -> None:
        with gr.Tab("About", id="about"):
            gr.Markdown(about.METHOD_MD)
            gr.HTML(about.DIAGRAM_SVG)
            gr.Markdown("### What is loaded")
            self.c["about_model"] = gr.Markdown(self.model_markdown(), elem_id="icf-model")
            gr.Markdown("### Model profiles")
            self.c["about_profiles"] = gr.HTML(self.profiles_html(), elem_id="icf-profiles")
            gr.Markdown(about.LIMITATIONS_MD)
            gr.Markdown(about.CITATIONS_MD)

    def wire(self, demo: gr.Blocks, status: gr.HTML, timer: gr.Timer) -> None:
        """The banner and this tab follow the model's loading, once a second until it is ready (or failed)."""
        components = dict(self.c, status=status, timer=timer)
        for event in (timer.tick, demo.load):
            listen(event, self.refresh, None, StatusView, components, queue=False, **Runner.PRIVATE)
        gr.api(self.status, api_name="status")

    # ------------------------------------------------------------------ handlers

    def refresh(self) -> StatusView:
        done = self.shared.service.state in ("ready", "error")
        return StatusView(self.status_banner(), self.model_markdown(), self.profiles_html(), gr.Timer(active=not done))

    def status_banner(self) -> str:
        svc = self.shared.service
        return status_html(svc.state, svc.loading_seconds(), svc.error, svc.info)

    def model_markdown(self) -> str:
        svc = self.shared.service
        return model_markdown(svc.info, svc.state, svc.error)

    def profiles_html(self) -> str:
        return profiles_html(self.shared.service.info, list_profiles())

    def status(self) -> dict:
        """JSON for the api: state, and the loaded model when ready."""
        svc = self.shared.service
        out: dict[str, Any] = {"state": svc.state}
        if svc.error:
            out["error"] = svc.error
        if svc.info is not None:
            info = svc.info
            out.update(
                llm=info.llm, llm_hash=info.llm_hash, device=info.device, dtype=info.dtype, methods=info.methods,
                compressors=info.compressors, untrained=info.untrained, load_seconds=round(info.load_seconds, 2),
                profile=info.profile, requested_profile=info.requested_profile,
                profile_fallback=info.profile_fallback,
            )
        return out
