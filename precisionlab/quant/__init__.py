"""What gets cast in a model: the precision recipe (recipe.py: the `precision` group's schema and the
casts it builds), the operand casts (operands.py), the quantized linear layer and the module swap
(linear.py: `convert_model`, nn.Linear and transformers' Conv1D), the attention core and its cast path
(attention.py), and the cast path of transformers models' attention, through their registry (hf.py).
"""
