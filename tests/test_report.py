"""The report's best SAE: near-ties in MCC go to the higher explained variance."""

from __future__ import annotations

from sae.report import MCC_TOLERANCE, best_sae, write_report


def _result(recovered: float, mcc: float, ev: float, l1: float = 0.1) -> dict:
    scalars = {
        "represented/recovered_0.99": recovered,
        "represented/mcc": mcc,
        "explained_variance": ev,
    }
    return {"scalars": scalars, "cfg": {"l1_coefficient": l1}, "plots": {}}


def test_mcc_near_tie_goes_to_higher_explained_variance():
    # the quick start's case: both recover everything, MCC differs in the fifth decimal
    results = {
        "sae_0": _result(0.25, 0.957, 0.996),
        "sae_2": _result(1.0, 0.99991, 0.911),
        "sae_3": _result(1.0, 0.99996, 0.593),
    }
    assert best_sae(results) == "sae_2"


def test_recovery_still_ranks_first_and_a_real_mcc_gap_still_counts():
    results = {
        "high_ev": _result(0.5, 0.999, 0.999),
        "recovers": _result(1.0, 0.95, 0.5),
        "better_mcc": _result(1.0, 0.95 + 2 * MCC_TOLERANCE, 0.4),
    }
    assert best_sae(results) == "better_mcc"
    results["close_mcc"] = _result(1.0, 0.95 + 1.5 * MCC_TOLERANCE, 0.45)
    assert best_sae(results) == "close_mcc"  # within tolerance of the best MCC, higher EV


def test_missing_scores_count_as_zero():
    results = {"a": {"scalars": {}, "cfg": {"l1_coefficient": 1}, "plots": {}}}
    results["b"] = _result(0.0, 0.0, 0.1)
    assert best_sae(results) == "b"


def test_report_states_the_rule(tmp_path):
    results = {"sae_2": _result(1.0, 0.99991, 0.911, 0.3), "sae_3": _result(1.0, 0.99996, 0.593, 1)}
    text = write_report(tmp_path / "report.md", "t", [], results)
    assert "**Best: `sae_2` (λ = 0.3)**" in text
    assert f"within {MCC_TOLERANCE:g} of the highest count as tied" in text
    assert "`sae_2` ⬅ best" in text
