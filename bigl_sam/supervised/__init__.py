"""`bigl-sam train`: SAM's supervised recipe (Kirillov et al., arXiv 2304.02643, appendix A) for any model the
registry builds, on COCO-format instance masks. `config.py` declares the options, `data.py` reads and augments
the images and masks, `prompts.py` draws the prompts of each round, `losses.py` scores a round, `loop.py`
runs the steps; checkpoints, resume, schedules and logs are `bigl_sam.training`'s, shared with `distill train`.
"""
