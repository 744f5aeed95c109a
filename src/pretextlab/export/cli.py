"""``python -m pretextlab.export``: export a run's backbone, or check an exported one."""

from __future__ import annotations

import argparse
import sys

from pretextlab.redaction import redact
from pretextlab.export.format import ExportError, description_path, load_backbone, read_metadata, resolve_paths
from pretextlab.export.run import export_backbone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretextlab.export",
        description="Export a run's pretrained backbone as safetensors weights + a JSON description, or check "
                    "an exported one (--check).",
    )
    parser.add_argument("run_dir", nargs="?", help="a run directory written by pretextlab.train (holds results.json)")
    parser.add_argument("--stage", help="cut the backbone at this stage (default: the whole backbone)")
    parser.add_argument("--output", help="weights file to write (default: <run dir>/export/backbone.safetensors)")
    parser.add_argument("--checkpoint", help="checkpoint to read (default: <run dir>/checkpoints/last.ckpt)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle the checkpoint fully (runs code stored in it; only for files you trust)")
    parser.add_argument("--check", metavar="EXPORTED",
                        help="load an exported backbone (its .safetensors, .json or folder) as load_backbone does "
                             "and print what it is, instead of exporting")
    args = parser.parse_args(argv)
    if (args.run_dir is None) == (args.check is None):
        parser.error("give a run directory to export, or --check EXPORTED (not both)")
    try:
        if args.check is not None:
            backbone = load_backbone(args.check)
            metadata = read_metadata(args.check)
            print(f"ok: {resolve_paths(args.check)[0]}: {metadata['build_config'].get('name')} backbone, stages "
                  f"{list(backbone.stage_names)}, feature dim {backbone.feature_dim}, input "
                  f"{(metadata.get('input') or {}).get('kind')}")
            return 0
        weights = export_backbone(args.run_dir, stage=args.stage, output=args.output, checkpoint=args.checkpoint,
                                  trust_checkpoint=args.trust_checkpoint)
    except ExportError as error:
        print(f"pretextlab.export: error: {redact(str(error))}", file=sys.stderr)
        return 2
    print(f"wrote {weights} and {description_path(weights)}")
    return 0

