"""``mergekit-expo demo``: generate a tiny SFT/aligned pair and ExPO-merge it, offline."""

from pathlib import Path

import click
import yaml

from mergekit_expo.alpha import DEFAULT_ALPHA, checked_alpha
from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.output_guard import DEMO_MARKER


@click.command("demo")
@click.option("--out", "out_dir", default="./expo-demo", show_default=True,
              type=click.Path(file_okay=False), help="Folder for the models, config and result")
@click.option("--alpha", default=str(DEFAULT_ALPHA), show_default=True,
              help="Extrapolation strength of the demo merge (0 gives the aligned model back)")
@click.option("--family", default="llama", show_default=True,
              type=click.Choice(["llama", "mistral", "qwen2"]))
@click.option("--overwrite", is_flag=True, help="Replace a previous demo folder at --out")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks on errors")
@reports_errors
def demo_command(out_dir: str, alpha: str, family: str, overwrite: bool, verbose: bool):
    """Write a tiny SFT/aligned pair, merge it with `expo` through mergekit, and
    print where the result is and how it relates to its inputs."""
    from mergekit.options import MergeOptions

    from mergekit_expo.atomic_output import replaced_folder
    from mergekit_expo.output_guard import check_output
    from mergekit_expo.run import run_config_file
    from mergekit_expo.synthetic import PairSpec, write_pair

    alpha = checked_alpha(alpha, option="--alpha")
    root = check_output(out_dir, reads=[], kind="demo", overwrite=overwrite)
    with replaced_folder(root):
        (root / DEMO_MARKER).write_text("written by mergekit-expo demo; --overwrite may replace this folder\n")
        models = root / "models"
        click.echo(f"Generating a tiny {family} SFT/aligned pair in {models} ...")
        sft, aligned = write_pair(str(models), PairSpec(family=family))
        config_path = root / "expo.yml"
        config_path.write_text(yaml.safe_dump({
            "merge_method": "expo",
            "base_model": sft,
            "models": [{"model": aligned, "parameters": {"alpha": alpha}}],
            "dtype": "bfloat16",
        }, sort_keys=False))
        click.echo(f"Merging with mergekit (config: {config_path}) ...")
        out = run_config_file(str(config_path), str(root / "merged"), MergeOptions(quiet=True))
    click.echo(summary(sft, aligned, out, alpha))


def summary(sft_dir: str, aligned_dir: str, out_dir: Path, alpha: float) -> str:
    """Size of the result and the measured extrapolation ratio, checked in fp64."""
    from mergekit_expo.checkpoint import load_all

    sft, aligned, merged = load_all(sft_dir), load_all(aligned_dir), load_all(out_dir)
    update = sum(float(((aligned[k].double() - sft[k].double()) ** 2).sum()) for k in merged)
    extra = sum(float(((merged[k].double() - aligned[k].double()) ** 2).sum()) for k in merged)
    elements = sum(t.numel() for t in merged.values())
    return (
        f"ExPO model written to {out_dir}\n"
        f"  {len(merged)} tensors, {elements / 1e6:.2f}M parameters, "
        f"{next(iter(merged.values())).dtype}\n"
        f"  |θ_expo − θ_aligned| / |θ_aligned − θ_sft| = {(extra / update) ** 0.5:.4f}\n"
        f"    ExPO moves the aligned model α times its alignment update further, so this\n"
        f"    ratio should be α = {alpha:g} (up to bf16 rounding of the written model)\n"
        f"  load it with transformers.AutoModelForCausalLM.from_pretrained({str(out_dir)!r})"
    )
