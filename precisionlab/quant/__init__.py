"""What gets cast in a model: the precision recipe (recipe.py: the `precision` group's schema and the
casts it builds), the operand casts (operands.py), the quantized linear layer and the module swap
(linear.py: `convert_model`), the attention core and its cast path (attention.py).
"""
