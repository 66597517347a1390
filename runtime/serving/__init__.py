"""`siglip-runtime serve`: a Triton Inference Server process (`server`) serving the models that
`models` plans from an artefact directory (`settings`: how), each running `backend`'s classes
inside Triton's Python backend; `model_config` writes the config.pbtxt blocks shared with
`siglip_export.triton` (the repository for a stock Triton)."""
