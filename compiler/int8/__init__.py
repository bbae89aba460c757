"""int8: post-training quantization and integer operators.

calibration   the user's data (folder of .npy, one .npy/.npz, arrays, an iterable) → inputs
ptq           PT2E (torchao) quantization with our scheme: BN folded, weights s8 per output
              channel, activations per tensor in the signedness the target wants
qdq_import    PT2E's quantize/dequantize ops → Relax R.quantize / R.dequantize
lowering      dequantize → conv → [act] [+ residual] → quantize  ⇒  one integer operator
accuracy      SQNR, cosine, top-1 agreement, quantization steps
layer_error   each quantized activation against fp32: where a collapse starts
"""
