"""``mergekit-expo search``: score candidate α values per worker process, no checkpoint per candidate."""

import json
import os
from pathlib import Path

import click

from mergekit_expo import hub
from mergekit_expo.checkpoint import shard_of
from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.compat.lm_eval import import_lm_eval
from mergekit_expo.compat.optuna import check_optuna
from mergekit_expo.devices import device_problem
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.hosts import require_mergekit
from mergekit_expo.output_guard import check_no_overlap, check_output, check_writable_parent
from mergekit_expo.search.ownership import check_owner
from mergekit_expo.search.registry import ENGINES
from mergekit_expo.search.results import RESULTS, check_plotting
from mergekit_expo.search.runner import search
from mergekit_expo.search.scoring import make_scorer
from mergekit_expo.search.searched_models import SearchedModels, read_models
from mergekit_expo.search.settings import GroupedHelp, search_options
from mergekit_expo.search.space import CandidateResolver, make_space, planned_alphas
from mergekit_expo.search.study import DEFAULT_STORAGE, open_storage, storage_url


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    problem = device_problem(device, fixes="cpu, cuda, cuda:N or auto")
    if problem:
        raise ExpoConfigError(f"--device {device} was given but {problem}: use --device cpu")
    return device


def check_search_outputs(s, models, settings):
    """Both outputs, before any model is loaded: never over an input, someone's files or another
    study's reports. Returns the checked --write-best output (None without it)."""
    inputs = [*models.roles(), ("the data file", s.data), ("the reward model", s.reward_model),
              ("the lm-eval tasks folder", s.tasks_path)]
    out = Path(os.path.abspath(s.out))
    check_no_overlap(out, s.out, inputs)
    if Path(s.out).is_symlink():  # as for every output (docs/safety.md)
        raise ExpoConfigError(f"--out {s.out} is a symlink: give the folder it should be written to itself")
    if out.exists() and not out.is_dir():
        raise ExpoConfigError(f"--out {s.out} is a file: choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / RESULTS).is_file() \
            and not (out / DEFAULT_STORAGE).is_file():
        raise ExpoConfigError(f"--out {s.out} already holds files that are not an α search (no {RESULTS}): "
                              "choose a new or empty folder")
    check_owner(s.out, s.storage, settings, default_note=s.default_note())
    check_writable_parent(out)
    if s.write_best:
        return check_output(s.write_best, reads=[*inputs, ("the search folder", s.out)], kind="model",
                            command="mergekit-expo search --write-best", overwrite=s.overwrite)


def check_installed(s) -> None:
    """What the options need installed, before anything is read; one line naming the extra."""
    if s.write_best:  # before the search: its merge needs mergekit, not just any host
        require_mergekit("--write-best")
    ENGINES.get(s.engine).load().check_installed()  # its library: one line naming the extra
    require_mergekit("mergekit-expo search")  # candidates resolve through mergekit's planner
    if s.uses_lm_eval:
        import_lm_eval()


def open_tools(s) -> str:
    """The plot, optuna, the storage and the engine are usable; returns the device."""
    check_plotting()
    check_optuna(s.sampler)
    if s.storage:  # an unopenable storage is one line before any model is read
        open_storage(storage_url(s.storage, s.out), s.heartbeat)
    return resolve_device(s.device)


def model_space(settings, sft_folder, aligned_folder, sft, aligned):
    """The space and the resolver of its candidates for an SFT and aligned pair (see :func:`space_for`)."""
    return space_for(settings, SearchedModels.pair(sft_folder, aligned_folder, sft, aligned))


def space_for(settings, models):
    """The space for these models and the resolver of its candidates (through mergekit)."""
    names = sorted(shard_of(Path(models.aligned)))
    model_type = json.loads((Path(models.aligned) / "config.json").read_text()).get("model_type")
    space = make_space(settings.space, names)
    if space.by_module:  # module spaces group what mergekit's planner gives α, not the checkpoint's names
        one = models.config(0.0, folders=True)  # one α everywhere: the planner's names of every tensor
        planned = planned_alphas(one, trust_remote_code=settings.trust_remote_code)
        space = make_space(settings.space, sorted(planned))
    resolver = CandidateResolver(space, models, checkpoint_names=names, model_type=model_type,
                                 dtype=settings.dtype, trust_remote_code=settings.trust_remote_code)
    return space, resolver


def make_scorers(s, identity: dict, reward_folder, device):
    """The scorer and the guard (None without one); their own settings join the search's identity."""
    options = dict(data=s.data, reward_model=reward_folder, sampling=s.sampling, device=device,
                   batch_size=s.batch_size, trust_remote_code=s.trust_remote_code,
                   lm_eval_options=s.lm_eval_options())
    scoring, guarding = (make_scorer(spec, **options) if spec else None for spec in (s.scorer, s.guard))
    for role, used in (("scorer", scoring), ("guard", guarding)):
        if used is not None and used.settings():  # lm-eval: tasks, metrics, limit, few-shot
            identity[f"{role}_settings"] = used.settings()
    return scoring, guarding


def report(s, results, reports, log, strategy, device, checked) -> None:
    """What the search found; with --write-best, the worker that scored the last candidate
    merges the best one (one worker writes it)."""
    click.echo(results.summary())
    click.echo("wrote " + ", ".join(str(p) for p in reports.values()))
    unit = strategy.unit_word
    click.echo(f"this worker scored {len(log.scored)} {unit}{'s' if len(log.scored) != 1 else ''} "
               f"and waited {log.idle_seconds:.1f} s for other workers' candidates", err=True)
    if not s.write_best:
        return
    if log.scored and log.last_completed not in log.scored:
        click.echo(f"the worker that scored the last candidate merges {reports['best']} into "
                   f"{s.write_best}", err=True)
        return
    from mergekit.options import MergeOptions

    from mergekit_expo.run import run_config_file

    out = run_config_file(str(reports["best"]), s.write_best, MergeOptions(device=device, quiet=True),
                          overwrite=s.overwrite, search=s.out, command="mergekit-expo search --write-best",
                          checked=checked)
    best = results.best()
    click.echo(f"ExPO model with {'alpha = ' if results.scalar else ''}{best.label} written to {out}")


@click.command("search", cls=GroupedHelp)
@click.argument("sft")
@click.argument("checkpoints", nargs=-1, required=True, metavar="CHECKPOINT...")
@reports_errors(interrupted="whatever was scored is kept in the study and results.json (nothing, if no "
                            "candidate was scored yet): rerun the same command to resume")
@search_options
def search_command(sft, checkpoints, settings):
    """Pick α the way the paper does: score the ExPO model of each candidate on a dev
    set, in one process per worker, without writing a checkpoint per candidate.

    SFT is the SFT model; CHECKPOINT the aligned model trained from it (expo), or several
    checkpoints of one run in training order (expo_trajectory: --steps, --window). A
    candidate is one α or one per module group and/or depth (--space); any number of
    processes running this command on one --out (or --storage) share the work.
    """
    s = settings
    check_installed(s)
    models = read_models(sft, checkpoints, steps=s.step_list, window=s.window)
    identity = s.study_settings(models.settings())
    best_output = check_search_outputs(s, models, identity)
    device = open_tools(s)
    reward_folder = hub.resolve(s.reward_model, "reward model")
    plan = s.plan(*space_for(s, models))
    scoring, guarding = make_scorers(s, identity, reward_folder, device)
    s.check_scorers(scoring, guarding)
    if s.default_note():  # after the checks (the scorers' too), so that a refusal stays one line
        click.echo(s.default_note(), err=True)
    engine_options = dict(s.engine_options(device), **models.engine_options())
    results, reports, log, strategy = search(
        s.out, scoring, plan, settings=identity, guard=guarding,
        about={"data_file": s.data and os.path.abspath(s.data)},
        open_engine=lambda: ENGINES.get(s.engine).load()(models.sft, *models.checkpoints, **engine_options))
    report(s, results, reports, log, strategy, device, best_output)
