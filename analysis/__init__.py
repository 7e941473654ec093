"""Reports and figures built from MLflow runs: ``analysis.report`` (collect a sweep's or a
comparison's runs, write the PNGs, results table and self-contained HTML) and
``analysis.report_figures`` (the figures over many runs). The command is ``ensda report``."""
