"""``sae.init: data``: decoder rows start as training inputs minus b_dec, normalised."""

from __future__ import annotations

import torch
from synthetic import file_source, sae_config, write_planted_file

from sae.lightning_module import SAEModule
from sae.run.seeding import data_init_seed


def _module(path, recipe: str, widths, seeds, tied: bool = False) -> SAEModule:
    config = sae_config(
        sae={"recipe": recipe, "init": "data", "b_dec_init": "mean", "tied": tied},
        sweep={"l1_coefficient": [0.1], "seed": seeds, "d_sae": widths},
    )
    module = SAEModule(config, 8, file_source(path, config))
    module.initialize_from_data()
    return module


def test_data_init_rows_are_inputs_minus_b_dec_per_instance_seed(tmp_path) -> None:
    path = tmp_path / "p.safetensors"
    write_planted_file(path, n_features=16, d=8, n_rows=4096, p=0.1, seed=0)
    module = _module(path, "april2024", [12, 20], [3, 4])
    sae = module.sae
    for k, (seed, width) in enumerate([(3, 12), (4, 20)]):
        x = module.source.sample(width, data_init_seed(seed), torch.device("cpu"))
        rows = x - sae.b_dec[k]
        expect = 0.1 * rows / rows.norm(dim=-1, keepdim=True)
        zero = x.norm(dim=-1) == 0  # p = 0.1, 16 features: about 1 row in 5 is all zero
        assert 0 < int(zero.sum()) < width
        torch.testing.assert_close(sae.W_dec[k, :width][~zero], expect[~zero])
        torch.testing.assert_close(sae.W_enc[k, :, :width].T[~zero], expect[~zero])
        # a latent drawn on an all-zero input keeps its random init, not the shared −b_dec
        kept = sae.W_dec[k, :width][zero]
        kept = kept / kept.norm(dim=-1, keepdim=True)
        b = sae.b_dec[k] / sae.b_dec[k].norm()
        assert float((kept @ b).abs().max()) < 0.99
        assert torch.all(sae.W_dec[k, width:] == 0)  # padding of the width sweep stays zero
    # the same instance alone starts the same
    alone = _module(path, "april2024", [12], [3]).sae
    torch.testing.assert_close(alone.W_dec[0], sae.W_dec[0, :12])
    # constrained: unit rows; tied: the encoder is the decoder
    tied = _module(path, "constrained", [16], [0], tied=True).sae
    torch.testing.assert_close(tied.decoder[0].norm(dim=-1), torch.ones(16))
