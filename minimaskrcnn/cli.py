"""The ``minimaskrcnn`` command: one sub-command per job, each a ``main(argv)`` in its own module.

The table below is the whole dispatch: a learner can follow any command to the file that runs it.
Modules are imported only when their command runs, so ``minimaskrcnn info`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    # name: (module, function, one-line help)
    "info": ("minimaskrcnn.backends", "info_main", "versions, devices and available backends"),
    "bench": (
        "minimaskrcnn.bench",
        "main",
        "kernel and model benchmarks: bench {roi,nms,conv,model}",
    ),
    "predict": ("minimaskrcnn.predict", "main", "run Mask R-CNN on an image and draw the result"),
    "shapes": (
        "minimaskrcnn.data.shapes",
        "main",
        "write the synthetic shapes data set (COCO format)",
    ),
    "train": ("minimaskrcnn.train", "main", "train Mask R-CNN on COCO-format data"),
    "evaluate": ("minimaskrcnn.evaluate", "main", "COCO box and mask AP with pycocotools"),
    "compare-roi": (
        "minimaskrcnn.compare_roi",
        "main",
        "RoIPool vs RoIWarp vs RoIAlign: numeric | train",
    ),
}


def add_backend_args(parser) -> None:
    """``--backend`` / ``--device`` / ``--kernels`` for the commands that run the model.

    ``train``, ``evaluate`` and ``predict`` take the same three options, so a run trained with
    ``--backend cupy`` is evaluated and drawn with the same words; ``--device cpu|gpu`` is the
    same choice named by device, as ``bench`` names it. Read the result with ``backend_from_args``.
    """
    g = parser.add_argument_group("where it runs")
    g.add_argument(
        "--backend",
        choices=["numpy", "cupy"],
        default=None,
        help="array backend: numpy (CPU, default) or cupy (GPU: the project's CUDA C kernels)",
    )
    g.add_argument(
        "--device",
        choices=["cpu", "gpu"],
        default=None,
        help="the same choice by device: cpu = --backend numpy, gpu = --backend cupy",
    )
    g.add_argument(
        "--kernels",
        default=None,
        choices=["numpy", "cpu"],
        help="kernel backend of every op on NumPy arrays (default: each op's own choice)",
    )


def backend_from_args(parser, args) -> str:
    """The array backend ``add_backend_args``' options ask for; a usage error when they disagree
    or when ``cupy`` is asked for where CuPy sees no GPU (before any data is read)."""
    from . import backends

    by_device = {"cpu": "numpy", "gpu": "cupy", None: None}[args.device]
    if args.backend and by_device and args.backend != by_device:
        parser.error(
            f"--backend {args.backend} and --device {args.device} disagree "
            "(--device gpu means --backend cupy, --device cpu means --backend numpy)"
        )
    backend = args.backend or by_device or "numpy"
    if backend == "cupy" and not backends.cupy_available():
        parser.error(
            "--backend cupy (--device gpu) needs CuPy and a CUDA GPU: pip install -e '.[gpu]' "
            f"on a machine with one; array backends available here: {backends.array_backends()}"
        )
    if backend == "cupy" and args.kernels:
        parser.error(f"--kernels {args.kernels} chooses CPU kernels; it has no effect with cupy")
    return backend


def usage() -> str:
    lines = [
        "usage: minimaskrcnn COMMAND [options]   (minimaskrcnn COMMAND --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<12} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"minimaskrcnn: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("minimaskrcnn"):
            print(
                f"minimaskrcnn {name}: not built yet in this version ({e.name} is missing)",
                file=sys.stderr,
            )
            return 2
        raise
    rc = getattr(mod, func)(rest)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
