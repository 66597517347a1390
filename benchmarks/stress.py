"""Image-tower checkpoints that are not this project's presets, in transformers' format.

A variant recipe tuned on seeded random weights can fail on released checkpoints, whose
activations have outliers random weights lack. These checkpoints put such properties into a
random-weight model on purpose, so the tests and the benchmark judge variants the way a real
checkpoint would (the weights are random: use them for accuracy gates and speed, not for
embeddings):

- `norms`: every LayerNorm's weight and bias perturbed by about 10% (a model that is not the
  preset, nothing more);
- `outliers`: a few channels of every LayerNorm's weight scaled up 20x, so the normalised
  activations that feed q/k/v and the MLP carry outlier features (hard on per-tensor int8), and
  massive activations in two residual channels at a few tokens, one at 70000, above float16's
  largest value 65504, as trained vision transformers show (a float16 file must handle them or
  be rejected by its gate).

    python benchmarks/stress.py DIR [--kind outliers] [--preset siglip-base-patch16-224] [--seed 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/stress.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KINDS = ("norms", "outliers")
OUTLIER_CHANNELS = 4  # per LayerNorm, scaled up
# Per massive residual channel: (added to the position embedding at a few tokens, how many tokens).
# Only at those tokens: an offset at every token would make every token's normalised activations
# alike, and the model degenerate (every output vector nearly the same, every cosine near 1).
MASSIVE = ((70000.0, 2), (20000.0, 3))


def stress_model(vision_config, kind: str, seed: int = 0):
    """A transformers `SiglipVisionModel` with seeded random weights and the `kind` of stress."""
    import torch
    import transformers

    if kind not in KINDS:
        raise ValueError(f"unknown stress kind {kind!r} (choose from {', '.join(KINDS)})")
    torch.manual_seed(seed)
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig.from_dict(vision_config.to_dict()))
    gen = torch.Generator().manual_seed(seed + 1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.mul_(1 + 0.1 * torch.randn(norm.weight.shape, generator=gen))
            norm.bias.add_(0.1 * torch.randn(norm.bias.shape, generator=gen))
        if kind == "outliers":
            hidden = norms[0].weight.numel()
            for norm in norms:
                channels = torch.randperm(hidden, generator=gen)[:OUTLIER_CHANNELS]
                norm.weight[channels] *= 20
            tower = getattr(model, "vision_model", model)  # transformers 4.x nests the tower; 5.x does not
            positions = tower.embeddings.position_embedding.weight  # (patches, hidden)
            channels = torch.randperm(hidden, generator=gen)[:len(MASSIVE)]
            for (value, tokens), channel in zip(MASSIVE, channels):
                rows = torch.randperm(positions.shape[0], generator=gen)[:tokens]
                positions[rows, channel] += value
    return model.eval()


def write_stress_checkpoint(directory: str | Path, vision_config, kind: str, seed: int = 0) -> Path:
    """`save_pretrained` of `stress_model(...)` into `directory`; returns it."""
    directory = Path(directory)
    stress_model(vision_config, kind, seed).save_pretrained(directory)
    return directory


def main(argv=None) -> int:
    from runtime.cli_support import ArgumentParser, run_command
    from siglip_export.model.config import DEFAULT_PRESET, PRESETS, SiglipConfig, preset

    parser = ArgumentParser(prog="python benchmarks/stress.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the checkpoint (config.json + model.safetensors)")
    parser.add_argument("--kind", choices=KINDS, default="outliers")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET, help="the architecture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    def write():
        config = preset(args.preset)
        vision = config.vision_config if isinstance(config, SiglipConfig) else config
        print(write_stress_checkpoint(args.directory, vision, args.kind, args.seed))

    return run_command(write, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
