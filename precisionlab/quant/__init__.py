"""What gets cast in a model: the quantized linear layer, its per-role casts, the cast attention path
and the module swap (`convert_model`).
"""
