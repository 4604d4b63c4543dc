"""How a loaded model runs for inference: per tower, eager torch or ONNX Runtime, fp32, bf16, fp16 or
int8 (:mod:`~clipforge.inference.paths`), chosen by measuring speed and agreement with eager fp32 on
this machine (:mod:`~clipforge.inference.choice`: ``prepare_for_inference``)."""
