"""``mergekit-expo search``: score candidate α values in one process, no checkpoint per α.

The aligned model is loaded once. For each α every weight is rewritten in place to
θ_aligned + α·(θ_aligned − θ_sft) by the same kernel as the ``expo`` merge method,
reading θ_aligned and θ_sft tensor by tensor from the checkpoints' safetensors files
(memory-mapped): resident memory is one model plus a few tensors of scratch.
"""

import hashlib
import time
from pathlib import Path
from typing import Iterable, List, Optional

import click

from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.errors import ExpoConfigError, ExpoInputError

DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # the paper's range
DTYPES = ("bfloat16", "float16", "float32")


class InPlaceExtrapolator:
    """One loaded model whose weights can be set to the ExPO model of any α."""

    def __init__(self, sft: str, aligned: str, *, device: str = "cpu",
                 dtype: Optional[str] = None, trust_remote_code: bool = False):
        import torch
        import transformers
        from safetensors import safe_open

        from mergekit_expo.checkpoint import shard_of
        from mergekit_expo.preflight import check_pair

        check_pair(sft, aligned)
        sft_shards, aligned_shards = shard_of(Path(sft)), shard_of(Path(aligned))
        if not aligned_shards or not sft_shards:
            raise ExpoInputError("search reads safetensors checkpoints: convert .bin checkpoints first")
        if set(sft_shards) != set(aligned_shards):
            extra = sorted(set(sft_shards) ^ set(aligned_shards))[0]
            raise ExpoInputError(f"tensor {extra} exists in only one of the two models: "
                                 "use the SFT checkpoint the aligned model was trained from")
        self.dtype = getattr(torch, dtype) if dtype else None
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            aligned, dtype=self.dtype or "auto", trust_remote_code=trust_remote_code
        ).to(device).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            aligned, trust_remote_code=trust_remote_code)
        targets = self.model.state_dict(keep_vars=True)
        missing = [name for name in aligned_shards if name not in targets]
        if missing:
            raise ExpoInputError(
                f"checkpoint tensor {missing[0]} has no counterpart in the loaded "
                f"{type(self.model).__name__}: merge with mergekit-yaml and score the result"
            )
        self._targets = {name: targets[name] for name in aligned_shards}
        self._files = {}  # open safetensors handles, memory-mapped, kept for all α
        self._sources = {}
        for name in aligned_shards:
            self._sources[name] = tuple(
                self._files.setdefault(file, safe_open(file, framework="pt"))
                for file in (sft_shards[name], aligned_shards[name])
            )

    def set_alpha(self, alpha: float) -> None:
        import torch

        from mergekit_expo.numerics import extrapolate_tensor

        with torch.no_grad():
            for name, target in self._targets.items():
                sft_file, aligned_file = self._sources[name]
                sft, aligned = sft_file.get_tensor(name), aligned_file.get_tensor(name)
                if not aligned.is_floating_point():
                    continue
                if self.dtype is not None:  # like mergekit's dtype: inputs convert first
                    sft, aligned = sft.to(self.dtype), aligned.to(self.dtype)
                device = target.device
                merged = extrapolate_tensor(sft.to(device), aligned.to(device), alpha, name=name)
                target.copy_(merged)
                del sft, aligned, merged


def parse_alphas(text: Optional[str]) -> List[float]:
    from mergekit_expo.alpha import checked_alpha

    if not text:
        return list(DEFAULT_ALPHAS)
    values = [checked_alpha(part.strip(), option="--alphas", in_search=True)
              for part in text.split(",") if part.strip()]
    if not values:
        raise ExpoConfigError("--alphas is empty: give e.g. --alphas 0,0.3,0.5")
    return sorted(set(values))


def refined(alphas: List[float], best: float) -> List[float]:
    """Midpoints on either side of the best α (coarse-to-fine, one level)."""
    ordered = sorted(alphas)
    index = ordered.index(best)
    around = []
    if index > 0:
        around.append((ordered[index - 1] + best) / 2)
    if index < len(ordered) - 1:
        around.append((ordered[index + 1] + best) / 2)
    return [round(a, 6) for a in around]


def make_scorer(scorer, data, reward_model, max_new_tokens, sample, seed, device, trust_remote_code):
    from mergekit_expo import scorers

    if scorer == "preference":
        _require(data, "--data (JSONL/CSV with prompt, chosen, rejected)")
        return scorers.PreferenceScorer(data)
    if scorer == "reward-model":
        _require(data, "--data (JSONL/CSV with a prompt column)")
        _require(reward_model, "--reward-model (a local sequence-classification model)")
        return scorers.RewardModelScorer(
            data, reward_model, max_new_tokens=max_new_tokens, sample=sample, seed=seed,
            device=device, trust_remote_code=trust_remote_code)
    if ":" in scorer:
        return scorers.CallableScorer(scorer)
    raise ExpoConfigError(
        f"unknown scorer {scorer!r}: use preference, reward-model, or module:function")


def _require(value, what):
    if not value:
        raise ExpoConfigError(f"this scorer needs {what}")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExpoConfigError("--device cuda was given but no CUDA device is visible: use --device cpu")
    return device


def fingerprint(*parts: Optional[str]) -> str:
    """Content hash of a data file, so a changed file is a different search."""
    digest = hashlib.sha256()
    for part in parts:
        if part and Path(part).is_file():
            digest.update(Path(part).read_bytes())
        digest.update(str(part).encode())
    return digest.hexdigest()[:16]


def check_search_outputs(out_dir, write_best, overwrite, *, sft, aligned, data, reward_model) -> None:
    """Both outputs, before anything is read: never over an input or someone's files."""
    from mergekit_expo.output_guard import check_no_overlap, check_output
    from mergekit_expo.search_results import RESULTS

    inputs = [("the SFT model", sft), ("the aligned model", aligned), ("the data file", data),
              ("the reward model", reward_model)]
    out = Path(out_dir).absolute()
    check_no_overlap(out, out_dir, inputs)
    if out.is_dir() and any(out.iterdir()) and not (out / RESULTS).is_file():
        raise ExpoConfigError(
            f"--out {out_dir} already holds files that are not an α search (no {RESULTS}): "
            "choose a new or empty folder"
        )
    if write_best:
        check_output(write_best, reads=[*inputs, ("the search folder", out_dir)], kind="model",
                     overwrite=overwrite)


def search(sft: str, aligned: str, out: str, scorer, alphas: Iterable[float], *,
           refine: bool = False, device: str = "cpu", dtype: Optional[str] = None,
           settings: Optional[dict] = None, trust_remote_code: bool = False):
    """Score each α (skipping those already in ``out``) and write the reports."""
    from tqdm import tqdm

    from mergekit_expo.search_results import AlphaResult, SearchResults

    sft, aligned = str(Path(sft).absolute()), str(Path(aligned).absolute())
    settings = dict(settings or {}, sft=sft, aligned=aligned, scorer=scorer.name, dtype=dtype)
    results = SearchResults.open(out, settings)
    pending = list(alphas)
    resumed = sum(results.done(a) for a in pending)
    if resumed:
        click.echo(f"resuming: {resumed} of {len(pending)} α already scored in {out}", err=True)
    engine = None
    while pending:
        for alpha in tqdm(pending, desc="alpha"):
            if results.done(alpha):
                continue
            if engine is None:
                engine = InPlaceExtrapolator(sft, aligned, device=device, dtype=dtype,
                                             trust_remote_code=trust_remote_code)
            start = time.perf_counter()
            engine.set_alpha(alpha)
            updated = time.perf_counter() - start
            score = scorer(engine.model, engine.tokenizer,
                           progress=lambda items: tqdm(items, desc=f"alpha={alpha:g}", leave=False))
            results.add(AlphaResult(alpha=alpha, score=score.value, low=score.low, high=score.high,
                                    n=score.n, seconds=time.perf_counter() - start, extra=score.extra,
                                    update_seconds=updated))
        pending = []
        if refine:
            refine = False
            pending = [a for a in refined([r.alpha for r in results.rows], results.best().alpha)
                       if not results.done(a)]
    return results, results.write_reports(sft, aligned, dtype)


@click.command("search")
@click.argument("sft", type=click.Path())
@click.argument("aligned", type=click.Path())
@click.option("--scorer", default="preference", show_default=True,
              help="preference, reward-model, or module:function returning a float")
@click.option("--data", help="JSONL/CSV (or saved datasets folder) with the prompts or preference pairs")
@click.option("--reward-model", help="Local AutoModelForSequenceClassification folder (reward-model scorer)")
@click.option("--out", "out_dir", default="./expo-search", show_default=True, type=click.Path(),
              help="Folder for results.json/csv, the plot and best.yml; rerunning resumes it")
@click.option("--alphas", help="Comma-separated α values  [default: 0,0.1,...,0.6]")
@click.option("--refine", is_flag=True, help="Also score the midpoints around the best α")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto")
@click.option("--dtype", type=click.Choice(DTYPES), help="Load and merge in this dtype  [default: checkpoint's]")
@click.option("--max-new-tokens", default=64, show_default=True, help="Answer length (reward-model scorer)")
@click.option("--sample/--greedy", default=False, show_default=True, help="Seeded sampling or greedy decoding")
@click.option("--seed", default=0, show_default=True,
              help="Seed of sampling (--sample) and of the bootstrap intervals")
@click.option("--trust-remote-code", is_flag=True, help="Run model code from the checkpoints (danger)")
@click.option("--write-best", type=click.Path(), help="Merge the best α with mergekit into this folder")
@click.option("--overwrite", is_flag=True,
              help="Let --write-best replace a previous mergekit output (never an input)")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks on errors")
@reports_errors(interrupted="the α values scored so far are kept in results.json: "
                            "rerun the same command to resume")
def search_command(sft, aligned, scorer, data, reward_model, out_dir, alphas, refine, device,
                   dtype, max_new_tokens, sample, seed, trust_remote_code, write_best, overwrite,
                   verbose):
    """Pick α the way the paper does: score the ExPO model of each candidate α on a dev
    set, in one process, without writing a checkpoint per α."""
    candidates = parse_alphas(alphas)
    check_search_outputs(out_dir, write_best, overwrite, sft=sft, aligned=aligned, data=data,
                         reward_model=reward_model)
    device = resolve_device(device)
    scoring = make_scorer(scorer, data, reward_model, max_new_tokens, sample, seed, device,
                          trust_remote_code)
    settings = {"data": fingerprint(data), "reward_model": reward_model and str(Path(reward_model).absolute()),
                "max_new_tokens": max_new_tokens, "sample": sample, "seed": seed}
    results, reports = search(sft, aligned, out_dir, scoring, candidates, refine=refine,
                              device=device, dtype=dtype, settings=settings,
                              trust_remote_code=trust_remote_code)
    click.echo(results.summary())
    click.echo("wrote " + ", ".join(str(p) for p in reports.values()))
    if write_best:
        from mergekit.options import MergeOptions

        from mergekit_expo.run import run_config_file

        out = run_config_file(str(reports["best"]), write_best,
                              MergeOptions(device=device, quiet=True), overwrite=overwrite)
        click.echo(f"ExPO model with alpha = {results.best().alpha:g} written to {out}")
