"""The `jaxdistill` command. Subcommands grow with the project; each is a module with `main()`."""

from __future__ import annotations

import sys

SUBCOMMANDS = {
    "demo": ("jaxdistill.demo", "the main job on the embedded default (what `make demo` runs)"),
    "train": ("jaxdistill.commands.train", "train or resume a run: --config configs/<recipe>.py --workdir runs/x"),
    "sample": ("jaxdistill.commands.sample", "samples of a checkpoint: --workdir runs/x [--num_steps k --num 64]"),
    "eval": ("jaxdistill.commands.evaluate", "metrics of a checkpoint: --workdir runs/x [--num 2000]"),
    "export": ("jaxdistill.commands.export", "a checkpoint's generator as safetensors: --workdir runs/x --out dir"),
    "teacher-train": ("jaxdistill.commands.teacher_train",
                      "train the embedded world's teacher: --config configs/world_teacher.py --out dir"),
    "judge-train": ("jaxdistill.commands.judge_train",
                    "train the embedded world's judge: --config configs/world_judge.py --out dir"),
    "info": ("jaxdistill.commands.info", "resolved config, parameters, step FLOPs and memory: --config ..."),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = [f"  {name:<13} {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
        print("usage: jaxdistill <command> [args]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}; expected one of {sorted(SUBCOMMANDS)}", file=sys.stderr)
            return 2
        return 0
    import importlib

    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    sys.argv = [f"jaxdistill {argv[0]}"] + argv[1:]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
