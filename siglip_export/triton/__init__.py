"""A Triton Inference Server model repository from a finished artefact directory (`repository`),
the `--triton-*` flags (`flags`), and `python -m siglip_export.triton ARTEFACTS REPO`."""

from .repository import REPO_RECORD, TritonOptions, check_repo_target, config_text, plan_models, write_triton_repo

__all__ = ["REPO_RECORD", "TritonOptions", "check_repo_target", "config_text", "plan_models", "write_triton_repo"]
