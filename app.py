"""Serve the IC-Former demo: ``python app.py [--host 127.0.0.1] [--port 7860] [--device cpu] [--profile NAME]``.

Host and port default to $GRADIO_SERVER_NAME / $GRADIO_SERVER_PORT, then 127.0.0.1:7860.
The model loads once, in the background, while the page is already up, and is shared by every
visitor: its profile (`python -m icformer profiles`) is chosen here, not in the page.
"""

from __future__ import annotations

import argparse
import logging
import os

from app import build_demo
from app.service import default_factory


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--profile", default=None,
                        help="model profile, e.g. embedded or paper (default: $ICFORMER_PROFILE, else embedded); "
                             "one that cannot load falls back to embedded, and the page says why")
    parser.add_argument("--results-dir", default=None, help="evaluation results (default: $ICFORMER_RESULTS or assets/results)")
    parser.add_argument("--max-context-tokens", type=int, default=4096, help="longest context the demo accepts")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up probes
    demo = build_demo(
        default_factory(args.device, args.profile), results_dir=args.results_dir,
        max_context_tokens=args.max_context_tokens,
    )
    demo.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
