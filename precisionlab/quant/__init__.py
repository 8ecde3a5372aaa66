"""What gets cast in a model: the quantized linear layer, its per-role casts and the module swap
(`convert_model`).
"""
