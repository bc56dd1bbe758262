"""`slmkit deploy`: evaluate what you deploy — one command from a model to a scored, timed, sized menu of
artifacts and the one to ship (spec: the --types vocabulary; build: parity-gated exports; pipeline: the
resumable run; docs + stats: per-document paired statistics; budget: --budget-minutes; report: tables,
Pareto front, pick)."""
