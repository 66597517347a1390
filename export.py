#!/usr/bin/env python
"""Export SigLIP to ONNX and prove the files match the eager model: `siglip_export.cli`.

    python export.py                          # siglip-base-patch16-224, random weights -> artifacts/
    python export.py --checkpoint DIR         # a Hugging Face SigLIP checkpoint directory

The same command line is installed as `siglip-export`. Exit status: 0 published; 2 bad input
(one line on stderr) or the export extra missing; 3 an artefact failed its parity gate
(nothing published); 1 an internal error.
"""

from __future__ import annotations

import sys

from siglip_export.cli import main

if __name__ == "__main__":
    sys.exit(main())
