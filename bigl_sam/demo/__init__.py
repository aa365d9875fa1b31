"""The click-to-segment web demo (`bigl-sam demo`).

Plain, testable parts (the model's work, encode once and decode per click, is `bigl_sam.inference`):
`session` (one browser's image and prompts), `render` (overlays, routing heat map), `handlers` (what each UI
event does), `models` (weights discovery). `app` wires them into a Gradio Blocks page; `cli` is the command.
"""
