"""One network for many partially labelled data sets (issue 14): the CLIP-driven Universal Model's
text-conditioned dynamic heads and partial-label loss (:mod:`.model`, :mod:`.loss`, :mod:`.prompts`,
:mod:`.postprocess`), trained across data sets with Ark's cyclic passes and EMA teacher and Foundation X's
lock-release (:mod:`.data`, :mod:`.schedule`, :mod:`.training`), and used to predict (:mod:`.predict`).
"""
