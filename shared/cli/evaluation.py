"""Offline router commands: `eval` scores routers on labelled outcomes, `train-router` fits the learned one."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn
from rich.progress import MofNCompleteColumn
from rich.progress import Progress
from rich.progress import TextColumn
from rich.progress import TimeElapsedColumn
from rich.table import Table

from shared.errors import DomainError

RANDOM = "random"
STRONG_MODEL = "gpt-4-1106-preview"
WEAK_MODEL = "mixtral-8x7b-instruct-v0.1"
# The routing policy's balanced threshold into the top tier of three: only "hard" prompts go strong.
DEFAULT_THRESHOLD = 2 / 3
SCORE_CHUNK = 256
TABLE_WIDTH = 130
SPLITS = ("all", "validation", "train")
BENCHMARK_ORDER = ("mmlu", "gsm8k", "mt_bench", "arc_challenge", "mbpp", "winogrande", "pooled")


@click.command("eval")
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Outcome rows (routing-eval JSON Lines, optionally gzipped).",
)
@click.option(
    "--router",
    "routers",
    multiple=True,
    default=("learned",),
    show_default=True,
    metavar="NAME",
    help="'random' or a difficulty estimator name (heuristic, learned); repeat to compare.",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="all",
    show_default=True,
    help="validation: the learned router's held-out routellm rows plus every other source; train: the rest.",
)
@click.option("--exclude-contaminated", is_flag=True, help="Drop the rows RouteLLM drops as contaminated.")
@click.option("--source", help="Only rows of this source (routellm or routerbench), so pooled covers just them.")
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=DEFAULT_THRESHOLD,
    show_default="2/3, the balanced threshold into the top of three tiers",
    help="Score at or above which a prompt goes strong, for the quality and cost at the router's threshold.",
)
@click.option(
    "--tiers",
    "tier_list",
    metavar="CHEAP,MID,HIGH",
    help="Models, weakest first: also replay the routing policy at each preference over them, on the rows that "
    "carry every one's score and real cost (RouterBench rows).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the metrics here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Plot PGR curves here.")
def eval_command(
    data_path: Path,
    routers: tuple[str, ...],
    split: str,
    exclude_contaminated: bool,
    source: str | None,
    threshold: float,
    tier_list: str | None,
    json_path: Path | None,
    plot_path: Path | None,
) -> None:
    """Score routers on labelled outcomes: APGR, CPT(50%), CPT(80%) per benchmark and pooled.

    Each router sees only each row's prompt. CPT values are fractions of calls sent to the strong model.
    """
    import numpy as np

    from shared.routing import evaluation
    from shared.routing import learned_estimator

    started = time.perf_counter()
    try:
        rows = evaluation.read_rows(data_path)
        _check_routers(routers)
    except DomainError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if split != "all":
        train, validation = learned_estimator.split_for_training(
            rows, holdout=learned_estimator.VALIDATION_HOLDOUT, seed=learned_estimator.TrainConfig().seed
        )
        rows = validation if split == "validation" else train
    if exclude_contaminated:
        rows = [row for row in rows if not row.get("routellm_contaminated")]
    if source is not None:
        rows = [row for row in rows if row.get("source") == source]
    if not rows:
        click.echo("no rows to evaluate", err=True)
        sys.exit(2)
    tier_models = [model.strip() for model in tier_list.split(",") if model.strip()] if tier_list else []
    priced = [i for i, row in enumerate(rows) if _has_costs(row, tier_models)] if tier_models else []
    if tier_models and not priced:
        click.echo(f"no row has a score and a cost for each of {', '.join(tier_models)}", err=True)
        sys.exit(2)
    prompts = [str(row["prompt"]) for row in rows]
    results = []
    policies = []
    for name in routers:
        try:
            scores = None if name == RANDOM else _score(name, prompts)
        except DomainError as exc:
            click.echo(str(exc), err=True)
            sys.exit(2)
        reports = evaluation.group_reports(
            rows, scores, threshold=threshold, strong_model=STRONG_MODEL, weak_model=WEAK_MODEL
        )
        results.append((name, reports))
        if tier_models:
            policy_scores = np.random.default_rng(0).random(len(rows)) if scores is None else scores
            policies.append(
                evaluation.tier_policy(
                    [rows[i] for i in priced], policy_scores[np.asarray(priced)], tier_models=tier_models
                )
            )
    console = Console()
    if not console.is_terminal:
        # Piped or captured output gets the full table rather than 80 columns of ellipses.
        console = Console(width=TABLE_WIDTH)
    console.print(_table(results, split=split, n=len(rows), threshold=threshold))
    if tier_models:
        console.print(_tier_table(routers, policies, tier_models=tier_models, n=len(priced)))
    elapsed = time.perf_counter() - started
    console.print(f"{len(rows)} prompts, {len(routers)} router(s), {elapsed:.1f} s")
    if json_path is not None:
        documents = [_document(name, reports, n=len(rows), split=split) for name, reports in results]
        for document, policy in zip(documents, policies, strict=False):
            document["tier_policy"] = _tier_document(policy, tier_models=tier_models, n=len(priced))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2) + "\n")
    if plot_path is not None:
        _plot(results, plot_path)


@click.command("train-router")
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Outcome rows (routing-eval JSON Lines, optionally gzipped); only source=routellm rows are used.",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the artifact (.npz), e.g. shared/routing/artifacts/learned-v1.npz.",
)
@click.option("--seed", type=int, default=None, help="Seed of the validation split (default: the shipped one).")
@click.option(
    "--holdout",
    type=click.FloatRange(0, 0.9),
    default=None,
    help="Share of routellm rows held out for validation, per benchmark (default: the shipped 0.2).",
)
def train_router(data_path: Path, out_path: Path, seed: int | None, holdout: float | None) -> None:
    """Train the learned router on routellm rows minus a held-out split; deterministic for a seed."""
    from shared.routing import evaluation
    from shared.routing import learned_estimator

    config = learned_estimator.TrainConfig() if seed is None else learned_estimator.TrainConfig(seed=seed)
    holdout = learned_estimator.VALIDATION_HOLDOUT if holdout is None else holdout
    try:
        rows = evaluation.read_rows(data_path)
    except DomainError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    train, validation = learned_estimator.split_for_training(rows, holdout=holdout, seed=config.seed)
    if not train:
        click.echo(f"no rows with source={learned_estimator.TRAIN_SOURCE!r} to train on", err=True)
        sys.exit(2)
    started = time.perf_counter()
    metadata = {
        "data_sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(),
        "train_source": learned_estimator.TRAIN_SOURCE,
        "train_rows": len(train),
        "validation_rows": len(validation),
        "holdout": holdout,
        "heads": "weak_fails, strong_fails (0/1 scores; judge scores: the other model's margin over 2 points)",
    }
    with Console(stderr=True).status(f"training on {len(train)} prompts"):
        artifact = learned_estimator.train(
            [str(row["prompt"]) for row in train],
            learned_estimator.iter_labels(train),
            config=config,
            metadata=metadata,
        )
    learned_estimator.save_artifact(artifact, out_path)
    click.echo(
        f"trained on {len(train)} prompts in {time.perf_counter() - started:.1f} s; "
        f"wrote {out_path} ({out_path.stat().st_size / 1024:.0f} KiB)"
    )


def _check_routers(routers: Sequence[str]) -> None:
    from shared.routing import difficulty

    for name in routers:
        if name != RANDOM:
            difficulty.get_estimator(name)


def _score(name: str, prompts: Sequence[str]):
    """Return the router's score for each prompt, with a progress bar on stderr."""
    import numpy as np

    from shared.routing import difficulty

    estimator = difficulty.get_estimator(name)
    batch = getattr(estimator, "scores", None)
    scores = np.empty(len(prompts))
    columns = (TextColumn(f"scoring with {name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(name, total=len(prompts))
        for start in range(0, len(prompts), SCORE_CHUNK):
            chunk = prompts[start : start + SCORE_CHUNK]
            if batch is not None:
                scores[start : start + len(chunk)] = batch(chunk)
            else:
                scores[start : start + len(chunk)] = [estimator.estimate(prompt).score for prompt in chunk]
            progress.advance(task, len(chunk))
    return scores


def _has_costs(row: dict[str, object], models: Sequence[str]) -> bool:
    scores, costs = row.get("scores"), row.get("costs_usd")
    return isinstance(scores, dict) and isinstance(costs, dict) and all(m in scores and m in costs for m in models)


def _tier_table(routers: Sequence[str], policies, *, tier_models: Sequence[str], n: int) -> Table:
    table = Table(
        title=f"Routing policy over {len(tier_models)} tiers ({', '.join(tier_models)}) on {n} prompts with real costs"
    )
    for column in ("router", "preference", "traffic per tier", "quality", "$/prompt", f"cost vs {tier_models[-1]}"):
        table.add_column(column, justify="left" if column in ("router", "preference") else "right")
    singles = policies[0][1]
    top_cost = singles[-1].cost_usd
    for index, (name, (points, _)) in enumerate(zip(routers, policies, strict=True)):
        for position, point in enumerate(points):
            table.add_row(
                name if position == 0 else "",
                point.preference,
                " / ".join(f"{share:.0%}" for share in point.tier_shares),
                f"{point.quality:.3f}",
                f"{point.cost_usd:.6f}",
                f"{point.cost_usd / top_cost:.1%}",
                end_section=position == len(points) - 1 and index < len(routers) - 1,
            )
    for single in singles:
        table.add_row(
            f"always {single.model}",
            "",
            "",
            f"{single.quality:.3f}",
            f"{single.cost_usd:.6f}",
            f"{single.cost_usd / top_cost:.1%}",
            style="dim",
        )
    return table


def _tier_document(policy, *, tier_models: Sequence[str], n: int) -> dict[str, object]:
    points, singles = policy
    return {
        "models": list(tier_models),
        "n": n,
        "preferences": {
            point.preference: {
                "tier_shares": [round(share, 4) for share in point.tier_shares],
                "quality": round(point.quality, 4),
                "cost_usd_per_prompt": round(point.cost_usd, 7),
            }
            for point in points
        },
        "single_models": {
            single.model: {"quality": round(single.quality, 4), "cost_usd_per_prompt": round(single.cost_usd, 7)}
            for single in singles
        },
    }


def _ordered(reports: dict[str, object]) -> list[str]:
    known = [name for name in BENCHMARK_ORDER if name in reports]
    return known + sorted(name for name in reports if name not in BENCHMARK_ORDER)


def _table(results, *, split: str, n: int, threshold: float) -> Table:
    table = Table(title=f"Routing on {n} prompts (split: {split}); CPT = share of strong calls")
    for column in ("benchmark", "router", "n", "APGR", "CPT(50%)", "CPT(80%)"):
        table.add_column(column, justify="left" if column in ("benchmark", "router") else "right")
    for column in (f"strong @{threshold:.2f}", "quality", "PGR", "$/prompt"):
        table.add_column(column, justify="right")
    benchmarks = _ordered(results[0][1])
    for benchmark in benchmarks:
        for index, (name, reports) in enumerate(results):
            item = reports[benchmark]
            cost = "" if item.threshold_cost_usd is None else f"{item.threshold_cost_usd:.6f}"
            table.add_row(
                benchmark if index == 0 else "",
                name,
                str(item.n),
                f"{item.apgr:.3f}",
                f"{item.cpt50:.1%}",
                f"{item.cpt80:.1%}",
                f"{item.threshold_share:.1%}",
                f"{item.threshold_quality:.3f}",
                f"{item.threshold_pgr:.2f}",
                cost,
                end_section=index == len(results) - 1,
            )
    return table


def _document(name: str, reports, *, n: int, split: str) -> dict[str, object]:
    pooled = reports.get("pooled")
    return {
        "router": name,
        "n": n,
        "split": split,
        "pooled": None if pooled is None else {key: pooled.to_dict()[key] for key in ("n", "apgr", "cpt50", "cpt80")},
        "benchmarks": {
            benchmark: reports[benchmark].to_dict() for benchmark in _ordered(reports) if benchmark != "pooled"
        },
        "pooled_detail": None if pooled is None else pooled.to_dict(),
    }


def _plot(results, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        click.echo("--plot needs matplotlib: pip install 'model-router[plot]'", err=True)
        return
    benchmarks = _ordered(results[0][1])
    columns = min(3, len(benchmarks))
    rows = (len(benchmarks) + columns - 1) // columns
    figure, axes = pyplot.subplots(rows, columns, figsize=(4.5 * columns, 4 * rows), squeeze=False)
    for axis, benchmark in zip(axes.flat, benchmarks, strict=False):
        axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
        for name, reports in results:
            curve = reports[benchmark].curve
            axis.plot(curve.share, curve.pgr, marker=".", label=f"{name} ({reports[benchmark].apgr:.2f})")
        axis.set_title(f"{benchmark} (n={results[0][1][benchmark].n})")
        axis.set_xlabel("share of strong calls")
        axis.set_ylabel("PGR")
        axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(benchmarks) :]:
        axis.set_visible(False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)
    click.echo(f"wrote {path}", err=True)
