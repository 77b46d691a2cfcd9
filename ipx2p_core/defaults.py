"""Default settings: the one home of these numbers. Nodes, CLI and docs read them from here.

They are the InstructPix2Pix paper's and the original repository's defaults (diffusers' SD pipeline uses the same).
"""

STEPS = 100
TEXT_GUIDANCE = 7.5
IMAGE_GUIDANCE = 1.5
SCHEDULER = "auto"  # Euler ancestral for SD 1.5 / SDXL, EDM Euler for CosXL Edit
SEED = 0
RESIZE = "keep"
DTYPE = "fp32"
