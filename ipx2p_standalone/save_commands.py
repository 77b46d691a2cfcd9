"""``ipx2p save-lora`` and ``ipx2p merge``: write a model's LoRA stack, or the model with its LoRAs and embeddings
merged in, never replacing a file unless --overwrite is given."""

from __future__ import annotations

from .edit_commands import _add_model_arguments, _load


def add_save_parsers(sub) -> None:
    p = sub.add_parser(
        "save-lora",
        help="save the --lora stack (at its strengths) as one LoRA file",
        description="Combine the --lora files, at their strengths, into one diffusers-format LoRA .safetensors that "
                    "diffusers, ComfyUI's Apply LoRA (IP2P) and this CLI load.",
    )
    p.add_argument("-o", "--output", required=True, help="LoRA file to write (.safetensors is added)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    _add_model_arguments(p)
    p.set_defaults(func=cmd_save_lora)

    p = sub.add_parser(
        "merge",
        help="save the model with its --lora and --embedding merged in",
        description="Fuse the --lora files into the model's weights and add the --embedding tokens, then save a "
                    "diffusers folder (default) or one original-layout .safetensors checkpoint.",
    )
    p.add_argument("-o", "--output", required=True, help="folder (diffusers) or file (single_file) to write")
    p.add_argument("--format", default="diffusers", choices=["diffusers", "single_file"],
                   help="diffusers folder (keeps embeddings) or single .safetensors checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder or file")
    _add_model_arguments(p)
    p.set_defaults(func=cmd_merge)


def cmd_save_lora(args) -> int:
    from ipx2p_core import save_lora_file

    print(save_lora_file(_load(args), args.output, overwrite=args.overwrite))
    return 0


def cmd_merge(args) -> int:
    from ipx2p_core import save_merged

    print(save_merged(_load(args), args.output, format=args.format, overwrite=args.overwrite))
    return 0
