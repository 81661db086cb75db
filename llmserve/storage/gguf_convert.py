"""Child process of llmserve.storage.gguf: `python -m llmserve.storage.gguf_convert FILE.gguf OUT_DIR`.

Needs torch, transformers, gguf and accelerate (the `cpu` or `gpu` extra). On failure it prints one line saying
why on stdout and exits 1; progress bars go to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path


class _Failed(Exception):
    pass


def _convert_in_process(gguf_file: Path, out_dir: Path) -> None:  # pragma: no cover - runs in the child
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise _Failed(
            f"converting GGUF needs torch, transformers, gguf and accelerate ({exc}); "
            "install the 'cpu' or 'gpu' extra: pip install 'llmserve[cpu]'"
        ) from None
    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:
        raise _Failed(f"not a loadable GGUF model ({type(exc).__name__}: {exc})") from None
    # The weights are dequantized; save them as a plain model, not as a quantized one.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m llmserve.storage.gguf_convert FILE.gguf OUT_DIR")
    try:
        _convert_in_process(Path(sys.argv[1]), Path(sys.argv[2]))
    except _Failed as failure:
        print(str(failure).replace("\n", " "), flush=True)
        raise SystemExit(1) from None
