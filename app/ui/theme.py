"""Look of the studio: a gradio theme and a little CSS (gradio 6 takes both at launch())."""
from __future__ import annotations

import gradio as gr

STUDIO_CSS = """
#studio-title h1 { margin: 0; font-size: 1.6rem; }
#studio-banner { padding: 0.35rem 0.8rem; border-radius: 6px; background: var(--block-background-fill); }
#studio-banner p { margin: 0; }
/* gallery captions carry name, split and annotation count: wrap them instead of cutting */
#studio-gallery .caption-label { white-space: normal; max-width: calc(100% - 2 * var(--block-label-margin));
  font-size: var(--text-xs); line-height: 1.25; word-break: break-word; }
"""


def studio_theme() -> gr.themes.Base:
    """Soft theme in a blue hue; masks on images stay the most colourful thing on screen."""
    return gr.themes.Soft(primary_hue="blue", secondary_hue="slate", neutral_hue="slate")
