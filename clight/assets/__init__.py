"""Files that ship inside installed packages (pretrained weights, bundled text) and what is
built from them once (the converted SmolLM2, tokenizers). Neither data nor models: both use it."""
