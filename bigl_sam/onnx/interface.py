"""What an export folder holds and the names its models use: shared by the exporter (torch) and the
predictor (onnxruntime only). The decoder's names are those of SAM's `SamOnnxModel`, so front-ends built
for SAM's ONNX decoder take ours unchanged."""

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
RECORD_FILE = "export.json"  # the export record: what was exported, its files, the check
ANYLABELING_FORMAT = "anylabeling"  # the export record's "format" of `--format anylabeling` exports
ANYLABELING_CONFIG_FILE = "config.yaml"  # `--format anylabeling` only: what AnyLabeling's "Load custom model" reads

DEFAULT_OPSET = 18
# The opsets torch 2.14's exporter writes: its ONNX functions are written for opset 18 (a lower request is
# silently exported at 18) and it declares support up to 23 (`torch.onnx._constants.ONNX_MAX_OPSET`; a
# higher number would stamp its older ops with newer versions' meaning). onnxruntime loads both models of
# bigl_test at each of them.
OPSETS = range(18, 24)

IMAGE_INPUT = "image"  # 1 x 3 x 1024 x 1024 float32, SAM-preprocessed (normalised, zero-padded)
KEEP_RATIO_INPUT = "keep_ratio"  # float32 scalar in (0, 1]; big.LITTLE encoders only
EMBEDDING_OUTPUT = "image_embeddings"  # 1 x 256 x 64 x 64 float32

DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")

# Metadata key of encoder.onnx holding the model's default keep ratio (absent for SAM's own encoders).
DEFAULT_KEEP_RATIO_KEY = "bigl_sam.default_keep_ratio"
# Metadata key of encoder.onnx and decoder.onnx (and export.json's "export_id"): the random id of the export
# that wrote them, so that files of two exports are never run together.
EXPORT_ID_KEY = "bigl_sam.export_id"
