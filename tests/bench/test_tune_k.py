"""``bench/tune_k.py`` chooses k by each score (the sign of Davies-Bouldin turned) and ranks
the scores against NMI. No sweep is run here."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.helpers import load_script

tune_k = load_script("bench/tune_k.py")


def test_each_score_chooses_its_own_best_trial_and_is_ranked_against_nmi():
    trials = pd.DataFrame({"k": [4, 6, 8], "objective": [0.1, 0.3, 0.2], "silhouette_embedding": [0.9, 0.5, 0.1],
                           "davies_bouldin": [2.0, 1.5, 1.0], "label_nmi": [0.2, 0.6, 0.4]})
    rows = {name: (k, rho, nmi) for name, k, rho, nmi in tune_k.summarise(trials)}
    assert rows["objective"] == (6, pytest.approx(1.0), 0.6)
    assert rows["own silhouette"] == (4, pytest.approx(-0.5), 0.2)
    assert rows["Davies-Bouldin"] == (8, pytest.approx(0.5), 0.4)  # lowest is best
