"""Training of the trainable parts (decoder, prompt learner, image projector, LoRA) on simulated
anomalies: `losses` (focal + dice), `data` (seeded on-the-fly simulation), `train` (the
accelerate loop with checkpoints, exact resume, validation and calibration)."""
