"""The click-to-segment web demo (`bigl-sam demo`).

Plain, testable parts: `inference` (encode once, decode per click), `session` (one browser's image and
prompts), `render` (overlays, routing heat map), `handlers` (what each UI event does), `models` (weights
discovery). `app` wires them into a Gradio Blocks page; `cli` is the command.
"""
