"""CDVAE-faithful evaluation metrics over pymatgen Structures (docs/metrics.md), for any model's output.

Entry points: :func:`evaluate_reconstruction` (match rate, RMSE, ceiling, match rate without the validity rule)
and :func:`evaluate_generation` (validity, COV-R/COV-P, AMSD/AMCD, property EMDs, diversity; with training
crystals uniqueness and novelty, :func:`novelty_uniqueness`, and for real data :func:`held_out_novelty_uniqueness`);
:func:`structures_from_arrays` turns batched model output into Structures; :func:`write_metrics_json` stores a
result with its labels. Per-crystal work and the structure matcher run over a process pool (``workers``).
"""

from .crystal import (
    MIN_FINGERPRINT_VOLUME_PER_ATOM,
    CrystalArrays,
    EvalCrystal,
    construct_structure,
    crystal_arrays,
    evaluate_crystal,
    evaluate_crystals,
    split_crystal_arrays,
    structures_from_arrays,
)
from .fingerprints import (
    COMP_SCALER_MEANS,
    COMP_SCALER_STDS,
    composition_fingerprint,
    normalise_comp_fps,
    structure_fingerprint,
)
from .generation import (
    DEFAULT_SEEDS,
    cov_thresholds,
    coverage,
    diversity,
    evaluate_generation,
    generation_metrics,
    property_emds,
    validity_fractions,
)
from .novelty import held_out_novelty_uniqueness, novelty_uniqueness
from .parallel import parallel_map
from .property_model import PropertyModel
from .reconstruction import (
    MATCHER_SETTINGS,
    any_of_n_metrics,
    evaluate_reconstruction,
    match_rms,
    reconstruction_metrics,
)
from .report import to_jsonable, write_metrics_json
from .validity import MIN_DISTANCE, MIN_VOLUME, composition_validity, reduced_composition, structure_validity

__all__ = [
    "COMP_SCALER_MEANS",
    "COMP_SCALER_STDS",
    "DEFAULT_SEEDS",
    "MATCHER_SETTINGS",
    "MIN_DISTANCE",
    "MIN_FINGERPRINT_VOLUME_PER_ATOM",
    "MIN_VOLUME",
    "CrystalArrays",
    "EvalCrystal",
    "PropertyModel",
    "any_of_n_metrics",
    "composition_fingerprint",
    "composition_validity",
    "construct_structure",
    "cov_thresholds",
    "coverage",
    "crystal_arrays",
    "diversity",
    "evaluate_crystal",
    "evaluate_crystals",
    "evaluate_generation",
    "evaluate_reconstruction",
    "generation_metrics",
    "held_out_novelty_uniqueness",
    "match_rms",
    "normalise_comp_fps",
    "novelty_uniqueness",
    "parallel_map",
    "property_emds",
    "reconstruction_metrics",
    "reduced_composition",
    "split_crystal_arrays",
    "structure_fingerprint",
    "structure_validity",
    "structures_from_arrays",
    "to_jsonable",
    "validity_fractions",
    "write_metrics_json",
]
