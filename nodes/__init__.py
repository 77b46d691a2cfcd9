"""The node classes (ComfyUI V1 API). Installed standalone as the package ``ipx2p_nodes``; inside ComfyUI it is the
``nodes`` sub-package of the pack (never a top-level ``nodes``, which is ComfyUI's own module)."""

from .compare import IPX2PCompare
from .decode import IPX2PDecode
from .edit import IPX2PEditImage
from .encode import IPX2PEncodeImage, IPX2PEncodeInstruction
from .loaders import IPX2PApplyEmbedding, IPX2PApplyLoRA, IPX2PLoadModel
from .sample import IPX2PSampler
from .save import IPX2PSaveLoRAStack, IPX2PSaveMergedModel
from .variations import IPX2PGuidanceSweep, IPX2PInstructionChain

NODE_CLASS_MAPPINGS = {
    "IPX2PLoadModel": IPX2PLoadModel,
    "IPX2PApplyLoRA": IPX2PApplyLoRA,
    "IPX2PApplyEmbedding": IPX2PApplyEmbedding,
    "IPX2PEncodeInstruction": IPX2PEncodeInstruction,
    "IPX2PEncodeImage": IPX2PEncodeImage,
    "IPX2PSampler": IPX2PSampler,
    "IPX2PDecode": IPX2PDecode,
    "IPX2PEditImage": IPX2PEditImage,
    "IPX2PGuidanceSweep": IPX2PGuidanceSweep,
    "IPX2PInstructionChain": IPX2PInstructionChain,
    "IPX2PCompare": IPX2PCompare,
    "IPX2PSaveLoRAStack": IPX2PSaveLoRAStack,
    "IPX2PSaveMergedModel": IPX2PSaveMergedModel,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "IPX2PLoadModel": "Load InstructPix2Pix Model",
    "IPX2PApplyLoRA": "Apply LoRA (IP2P)",
    "IPX2PApplyEmbedding": "Apply Embedding (IP2P)",
    "IPX2PEncodeInstruction": "Encode Instruction (IP2P)",
    "IPX2PEncodeImage": "Encode Image (IP2P)",
    "IPX2PSampler": "Dual-Guidance Sampler (IP2P)",
    "IPX2PDecode": "Decode (IP2P)",
    "IPX2PEditImage": "Edit Image (InstructPix2Pix)",
    "IPX2PGuidanceSweep": "Guidance Sweep (IP2P)",
    "IPX2PInstructionChain": "Instruction Chain (IP2P)",
    "IPX2PCompare": "Compare Before/After (IP2P)",
    "IPX2PSaveLoRAStack": "Save LoRA Stack (IP2P)",
    "IPX2PSaveMergedModel": "Save Merged Model (IP2P)",
}
