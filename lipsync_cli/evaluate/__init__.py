"""Evaluation: SyncNet's LSE-D / LSE-C (``lse``), image metrics (``metrics``), the papers' benchmark protocol
(``benchmark``), result files (``report``) and pictures (``plots``)."""
