"""The model's pieces as plain torch modules and functions, without file or network I/O:
encoders, patch decoder, memory bank, detector, prompt learner, the LVLM (chat prompt,
generation, trainable state) and the float16 decoding weights. `anomalygpt.checkpoint`
resolves weights and wires them together."""
