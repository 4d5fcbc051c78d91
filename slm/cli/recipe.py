"""`slm recipe NAME`: the named, resumable stages from nothing to a bundled model (see slm.recipe)."""
from __future__ import annotations

import argparse
from pathlib import Path

STAGE_HELP = "synth, real, teacher, codec, tokenize, lm, eval, export"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recipe", help="build the default model from nothing: corpus -> codec -> LM -> eval "
                              "-> checkpoints/default (resumable stages)")
    p.add_argument("name", help="recipe settings: 'default', 'tiny' (configs/recipe/NAME.yaml) or a YAML path")
    p.add_argument("--from-stage", default=None, help=f"start at this stage ({STAGE_HELP})")
    p.add_argument("--only-stage", action="append", default=None,
                   help="run only this stage (repeatable); completed stages still skip unless --force")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="override a setting, e.g. --set lm.max_minutes=5 --set work_dir=runs/recipe/x")
    p.add_argument("--force", action="store_true", help="rerun the selected stages even if their stamps exist")
    p.add_argument("--list", action="store_true", help="print the stages, their commands and state, run nothing")
    p.set_defaults(func=_recipe)


def settings_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return Path(__file__).resolve().parents[2] / "configs" / "recipe" / f"{name}.yaml"


def _recipe(args: argparse.Namespace) -> int:
    from slm.recipe import STAGE_TABLE, Recipe, load_settings, run_recipe, select_stages

    settings = load_settings(settings_path(args.name), args.overrides)
    root = Path.cwd()
    if args.list:
        r = Recipe(settings, root.resolve())
        for n in select_stages(args.from_stage, args.only_stage):
            st = STAGE_TABLE[n]
            done = (r.work / "stamps" / f"{n}.json").is_file() and not st.missing(r)
            print(f"{n:9s} {'done' if done else 'todo'}  {st.what}")
        return 0
    run_recipe(settings, root, args.from_stage, args.only_stage, force=args.force)
    return 0
