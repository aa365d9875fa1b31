"""Distillation from a SAM teacher: a cache of teacher embeddings, then student training.

    bigl-sam distill cache --teacher vit_h --teacher-checkpoint sam_vit_h_4b8939.pth --images DIR --out CACHE
    bigl-sam distill train --student bigl_b_t --encoder-checkpoint sam_vit_b_01ec64.pth \
        --decoder-checkpoint sam_vit_h_4b8939.pth --cache CACHE --out RUN
"""
