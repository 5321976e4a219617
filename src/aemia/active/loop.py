"""The human-in-the-loop active-learning cycle: init → query → annotate → import → train → query …

The cycle is implemented in small modules; this one re-exports them (so ``from aemia.active.loop import …``
keeps working):

* :mod:`aemia.active.pictures` — 2D pictures → network inputs, label pictures → masks (the 2D-only scope);
* :mod:`aemia.active.project` — the project folder and its layout, :class:`ProjectConfig`, :class:`Project`,
  ``init`` (:func:`init_project`);
* :mod:`aemia.active.scoring` — pool scores per strategy (ACFT's 8 dihedral copies, BALD's MC dropout,
  core-set embeddings): :func:`score_images`, :func:`score_pool`;
* :mod:`aemia.active.query` — ``query`` (:func:`query_round`; random cold start);
* :mod:`aemia.active.importing` — ``import`` (:func:`import_labels`: all labels validated, then all or none);
* :mod:`aemia.active.continual` — ``train``: continual fine-tuning (ACFT, Zhou et al. CVPR'17 / MedIA'21;
  ``reference/METHODS.md`` §5.1), its modes, hard cases and fixed validation set (:func:`train_round`);
* :mod:`aemia.active.status` — ``status`` and the learning curve (:func:`project_status`).
"""

from __future__ import annotations

# Re-exports: the public API, and the private names other modules and tests import from here.
from aemia.active.continual import (  # noqa: F401
    MODES,
    _MODE_ALIASES,
    _normalise_mode,
    _predict_all,
    _validation_metrics,
    case_scores,
    fit_model,
    hard_cases,
    initial_model,
    train_round,
    validation_cases,
)
from aemia.active.importing import (  # noqa: F401
    ImportResult,
    _case_problem,
    _class_name,
    _hash_problem,
    _mask_problem,
    _read_label_csv,
    _sha,
    _user,
    import_labels,
)
from aemia.active.pictures import (  # noqa: F401
    LOSSY,
    PICTURES,
    _THREE_D,
    _case_id,
    _pictures,
    decode_mask,
    to_network_input,
)
from aemia.active.project import (  # noqa: F401
    PROJECT_FILE,
    TASKS,
    VALIDATION_FILE,
    Project,
    ProjectConfig,
    _now,
    _open_project,
    init_project,
)
from aemia.active.query import QueryResult, _round_readme, query_round  # noqa: F401
from aemia.active.scoring import (  # noqa: F401
    MC_SAMPLES,
    N_COPIES,
    _dihedral,
    _dihedral_inverse,
    _embeddings,
    _forward_softmax,
    _mc_dropout_probs,
    _probs,
    score_images,
    score_pool,
)
from aemia.active.status import _plot_curve, learning_curve, project_status  # noqa: F401

__all__ = [
    "MODES",
    "TASKS",
    "ImportResult",
    "Project",
    "ProjectConfig",
    "QueryResult",
    "decode_mask",
    "fit_model",
    "hard_cases",
    "import_labels",
    "init_project",
    "initial_model",
    "learning_curve",
    "project_status",
    "query_round",
    "score_images",
    "score_pool",
    "train_round",
]
