"""Simulated anomalies and data for training and evaluating the inspection assistant.

Modules (import the one you need; nothing heavy is imported here):

- ``imageio``: load any image as RGB uint8, list image folders, atomic PNG/text writes
- ``masks``: where on a normal image an anomaly may go (object mask / texture)
- ``nsa``: ``synthesize`` - NSA, CutPaste and drawn EL defects (crack, blotch, line)
- ``structural``: the drawn EL defect modes
- ``regions``: ``regions_from_mask`` - box, area, centre and 3x3 cell of each region
- ``qa``: question/answer pairs computed from masks
- ``datasets``: MVTec AD, VisA, folder and ELPV adapters; training image specs
- ``corpus``: cached Hugging Face ``Dataset`` of simulated Q&A samples
- ``simulate``: ``run_simulate`` behind ``anomalygpt simulate``
"""
