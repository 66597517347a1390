"""What the towers take, made without PyTorch: `images` (image -> pixel_values, as transformers'
SiglipImageProcessor makes them) and the text tokenizers over one sentencepiece base
(`siglip_tokenizer` for SigLIP, `gemma_tokenizer` for SigLIP 2)."""
