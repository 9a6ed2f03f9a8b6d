"""``sae run``: the whole pipeline on one config."""

from __future__ import annotations

import click

from cli.common import RunOptions, run_options


@click.command("run")
@run_options(example="toy.model.n_hidden=5")
def run(options: RunOptions) -> None:
    """Toy model -> activations -> SAE sweep -> scores -> report.md (with plots)."""
    from cli.pipeline import PipelineConfig, run_pipeline
    from sae.run.layout import PipelineDir

    config, out, resuming = options.resolve(
        PipelineConfig, sections=("toy.", "sae."), layout=PipelineDir
    )
    # Stage lines and progress go to stderr; the result goes to stdout.
    results = run_pipeline(config, out, resume=resuming, echo=lambda m: click.echo(m, err=True))
    if results is not None:
        from sae.report import best_sae

        best = best_sae(results)
        l1 = results[best]["cfg"]["l1_coefficient"]
        click.echo(f"best: {best} (l1 = {l1:g}); report: {PipelineDir(out).report}")
