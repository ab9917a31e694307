"""The end of a run: the last checkpoint, then either the stop after a signal or the final evaluation, the export
from the full weights, ``results.json``, the trackers closed and the optional push to the Hub."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mxr0.config import Recipe
from mxr0.distributed import _rank_checksums, zero_stage
from mxr0.hub import push_run
from mxr0.train.checkpoint import TrainState, newest_good_checkpoint, save_checkpoint
from mxr0.train.launch import export_model
from mxr0.train.setup import Run
from mxr0.train.steps import evaluate, fmt_metrics
from mxr0.train.trackers import write_results

log = logging.getLogger("mxr0.train")


def finish(run: Run, state: TrainState, interrupted: bool, last_eval: dict[str, float]) -> dict[str, Any]:
    """Save the last checkpoint (when its weights are good) and end the run: after a stop request, say how to
    continue; otherwise evaluate, export, write ``results.json`` and push when asked. Returns the run's result."""
    t, acc, task = run.recipe.train, run.accelerator, run.task
    run_dir, ckpt_dir = run.run_dir, run.run_dir / "checkpoints"
    ckpt = save_checkpoint(acc, ckpt_dir, state, t.keep_last, run.model, run.optimizer)
    if ckpt is None:  # not written: the weights or the last steps were not good
        ckpt = newest_good_checkpoint(ckpt_dir)
    if interrupted:
        if run.is_main:
            where = f"checkpoint {ckpt}" if ckpt else f"no good checkpoint in {ckpt_dir}"
            tqdm.write(f"[mxr0] stopped by a signal at step {state.step}/{run.total_steps}; {where}. "
                       f"Continue with: mxr0 train <recipe> --resume")
        acc.end_training()
        return {"metrics": {}, "run_dir": str(run_dir), "export_dir": None, "checkpoint": str(ckpt) if ckpt else None,
                "state": asdict(state), "main_metric": task.main_metric, "num_processes": acc.num_processes,
                "interrupted": True}
    if run.eval_loader is not None:
        last_eval = evaluate(task, run.model, run.eval_loader, acc)
    export_dir, staging = run_dir / "export", run_dir / "export.partial"
    if run.is_main and staging.exists():  # a crashed export's leftovers
        shutil.rmtree(staging)
    acc.wait_for_everyone()
    checksums = _rank_checksums(run.model, acc)
    export_model(task, run.model, acc, staging)
    if run.is_main:
        replace_folder(staging, export_dir)
    acc.wait_for_everyone()
    result = {"metrics": last_eval, "run_dir": str(run_dir), "export_dir": str(export_dir),
              "checkpoint": str(ckpt) if ckpt else None,
              "state": asdict(state), "main_metric": task.main_metric, "num_processes": acc.num_processes,
              "distributed_type": str(acc.distributed_type).split(".")[-1],
              "zero_stage": zero_stage(acc), "rank_param_checksums": checksums, "interrupted": False}
    if run.is_main:
        acc.log({f"eval/{k}": v for k, v in last_eval.items()}, step=state.step)
        write_results(run_dir, result)
        tqdm.write(f"[mxr0] done: step {state.step}, eval: {fmt_metrics(last_eval)}; model in {export_dir}")
        if t.push_to_hub:
            push_after_training(run.recipe, run_dir, export_dir, result)
    acc.end_training()
    return result


def replace_folder(new: Path, dest: Path) -> None:
    """Put the finished folder ``new`` at ``dest``, replacing a previous one whole: an export is written into a fresh
    folder and swapped in, so a rerun into the same run folder never mixes in a stale file of the previous export
    (a processor config of another image size, an adapter of another run), and a crash mid-export leaves the
    previous export intact."""
    old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def push_after_training(recipe: Recipe, run_dir: Path, export_dir: Path, result: dict) -> None:
    """``train.push_to_hub``: upload the export and its card; a failure is logged, never raised (the
    trained model is already safe in the run folder)."""
    t = recipe.train
    retry = f"mxr0 push {run_dir} --repo-id {t.hub_repo_id or 'OWNER/NAME'}" + ("" if t.hub_private else " --public") + (
        f" --revision {t.hub_revision}" if t.hub_revision else "")
    try:
        if not t.hub_repo_id:
            raise ValueError("train.push_to_hub=true needs train.hub_repo_id=OWNER/NAME")

        result["hub_url"] = push_run(run_dir, t.hub_repo_id, private=t.hub_private, revision=t.hub_revision)
        log.info("pushed to the Hub: %s", result["hub_url"])
    except Exception as e:  # noqa: BLE001 - a failed upload must not lose the trained model
        log.error("push to the Hub failed (%s: %s). The export is safe at %s; retry with: %s",
                  type(e).__name__, e, export_dir, retry)
