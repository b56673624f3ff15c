"""``python -m convert.verify BUNDLE_DIR``: check a bundle's files and run one sample per precision."""

from __future__ import annotations

import argparse
import json
import sys

from pi_runtime.bundle import BundleError, verify_bundle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.verify", description=__doc__.split(":", 1)[1].strip())
    ap.add_argument("bundle", help="bundle directory (holds manifest.json)")
    args = ap.parse_args(argv)
    try:
        shapes = verify_bundle(args.bundle)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"bundle": args.bundle, "ok": True, "logits_shapes": shapes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
