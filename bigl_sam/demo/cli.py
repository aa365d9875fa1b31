"""`bigl-sam demo`: the click-to-segment web page. Weights are checked before the server starts."""

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from ..errors import BiglSamError, first_line
from ..images import image_files
from ..modeling.config import MODEL_CONFIGS
from ..options import add_dtype_option, add_model_options

if TYPE_CHECKING:  # annotations only: --help imports no torch
    from .models import DemoModels

# The repository's own drawn examples (absent from a wheel install: then the page has none).
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "demo" / "examples"
MAX_PORT = 65535


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = sorted(MODEL_CONFIGS)
    add = parser.add_argument
    add_model_options(parser, default_model="bigl_b_t")
    add("--compare", choices=names, help="also run this model (e.g. vit_h) on the same clicks")
    add("--compare-checkpoint", type=Path, metavar="PATH", help="weights of the --compare model")
    add_dtype_option(parser, "the image encoder")
    add("--examples", type=Path, metavar="DIR",
        help="folder of example images (default: the repository's demo/examples, where there is one)")
    add("--host", default="127.0.0.1", metavar="ADDRESS", help="address to serve on (0.0.0.0: the whole network)")
    add("--port", type=int, default=7860, metavar="N", help="port to serve on")
    add("--no-compile", action="store_true",
        help="skip compiling the mask decoder: starts sooner (the compile takes 7 s to over 2 min on a CPU, by "
             "load and cache), each click 1.6 to 1.8 times slower (docs/benchmark.md, One demo click)")


def example_images(folder: Optional[Path] = None) -> List[Path]:
    """The images in `folder`, a `BiglSamError` if it is missing or holds none; None: the repository's own
    examples, or none where they are absent (a wheel install)."""
    if folder is None:
        return example_images(EXAMPLES_DIR) if EXAMPLES_DIR.is_dir() else []
    return image_files(folder, "--examples")


def _compile_decoders(models: "DemoModels") -> None:
    from ..inference import compile_decoder

    for demo_model in models.shown:
        print(f"compiling {demo_model.model_type}'s mask decoder for fast clicks (--no-compile skips it)...", flush=True)
        try:
            print(f"  done in {compile_decoder(demo_model.model):.0f} s", flush=True)
        except Exception as err:  # the demo still works, only its clicks are slower
            print(f"  torch.compile unavailable ({first_line(err)}); clicks run eagerly", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import torch  # here, not at the top, as the rest: --help does without them

    from ..distributed import DTYPES, note_bfloat16
    from ..pretrained import weights_lines
    from .models import load_demo_models

    if not 0 <= args.port <= MAX_PORT:
        raise BiglSamError(f"--port must be in 0-{MAX_PORT}, got {args.port}")
    examples = example_images(args.examples)
    note_bfloat16(torch.device("cpu"), args.dtype)  # the demo runs on the CPU
    models = load_demo_models(
        args.model, args.checkpoint, args.compare, args.compare_checkpoint, args.keep_ratio, args.weights_dir,
        encoder_dtype=DTYPES[args.dtype],
    )
    print(weights_lines([demo_model.weights for demo_model in models.shown]), flush=True)
    if not args.no_compile:
        _compile_decoders(models)
    from .app import build_app, launch  # gradio takes seconds to import: only once the weights are good
    from .handlers import DemoHandlers

    with tempfile.TemporaryDirectory(prefix="bigl-sam-demo-") as workdir:
        handlers = DemoHandlers(models, Path(workdir))
        print(f"Everything: {handlers.decoder_seconds_per_prompt() * 1000:.1f} ms of decoder per point prompt "
              f"(measured; the page estimates each run from it)", flush=True)
        app = build_app(handlers, examples)
        try:
            launch(app, args.host, args.port, Path(workdir))
        except OSError as err:  # the port is taken, or the address is not this machine's
            raise BiglSamError(f"cannot serve on {args.host}:{args.port} ({err}); try another --port") from None
    return 0
