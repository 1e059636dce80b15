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
