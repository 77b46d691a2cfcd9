"""Default settings: the one home of these numbers. The engine's entry points, the nodes, the CLI and the web
extensions (through the nodes' ``/object_info``) read them from here; README's "Defaults" paragraph explains them.

Sampling follows the InstructPix2Pix paper and original repository (diffusers' pipeline uses the same numbers).
"""

# sampling
STEPS = 100
MAX_STEPS = 1000  # the models' training schedule
TEXT_GUIDANCE = 7.5
IMAGE_GUIDANCE = 1.5
SCHEDULER = "auto"  # Euler ancestral for SD 1.5 / SDXL, EDM Euler for CosXL Edit
SEED = 0
MAX_SEED = 0xFFFFFFFFFFFFFFFF  # 64-bit, as ComfyUI's seed widgets
IMAGES_PER_INSTRUCTION = 1
GUIDANCE_RESCALE = 0.0  # off
ETA = 0.0  # DDIM's deterministic sampling
STRENGTH = 1.0  # the standard edit, from pure noise
IMAGE_GUIDANCE_END = None  # constant image guidance (the nodes' widget writes -1 for it)

# size: work at the input's size and hand the result back at that size (a multiple-of-8 crop otherwise)
RESIZE = "keep"
FIT_SIZE = 512  # longest side for resize "fit" (the SD 1.5 models' training size)
EXACT_SIZE = (512, 512)  # width, height for resize "exact"
RESTORE_SIZE = True

# masked edits: an 8-pixel feather hides the seam at the mask's edge; 0 grow keeps the mask as drawn
MASK_GROW = 0
MASK_FEATHER = 8

# guidance sweep: a 3 x 3 grid around the defaults
SWEEP_TEXT_GUIDANCES = (5.0, 7.5, 10.0)
SWEEP_IMAGE_GUIDANCES = (1.0, 1.5, 2.0)
SWEEP_MAX_BATCH = 64  # UNet rows per call; never changes results, only memory use

# adapters
LORA_STRENGTH = 1.0

# limits: CLIP reads 77 tokens (about 300 characters); a longer instruction is cut with a warning. Far longer text is
# refused before any tokenizing (a 50 MB one took minutes and 11 GB to tokenize whole), and metadata keeps a bounded
# start of it plus its length and hash.
MAX_INSTRUCTION_CHARS = 10_000
METADATA_TEXT_CHARS = 1_000
MAX_IMAGE_PIXELS = 100_000_000  # 100 megapixels over all frames of a file: any camera photo, never a decompression bomb

# loading
FAMILY = "auto"  # read from the weights
DEVICE = "auto"  # the host's device (ComfyUI's choice inside ComfyUI; CUDA, then MPS, then the CPU outside it)
DTYPE = "auto"  # fp16 on a GPU, fp32 on the CPU (see dtype_for)
COMPILE = False  # fast mode (ipx2p_core/fast.py) is opt-in: its first compile on a machine takes minutes


def dtype_for(dtype: str, device_type: str) -> str:
    """Resolve "auto": fp16 on a GPU (cuda, mps) halves memory and time there; the CPU has no fast fp16, so fp32."""
    if dtype != "auto":
        return dtype
    return "fp16" if device_type in ("cuda", "mps") else "fp32"
