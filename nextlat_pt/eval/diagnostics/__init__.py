"""Latent diagnostics (`nextlat-pt eval --diagnostics`, `nextlat-pt eval compare`):
effective rank of the final hidden states and linear probes on them.

- `rank.effective_rank`: exp(entropy of the normalised singular values), the paper's §8;
- `hidden.collect_hidden_states`: a loaded eval model's final post-norm hidden states;
- `probes.fit_linear_probe`, `probes.token_offset_probes`: softmax-regression probes, split
  by sequence (or any grouping);
- `report.run_diagnostics`: all of it for one model on validation windows.
"""

from nextlat_pt.eval.diagnostics.hidden import collect_hidden_states, forward_windows
from nextlat_pt.eval.diagnostics.probes import (
    ProbeResult,
    fit_linear_probe,
    split_groups,
    token_offset_probes,
)
from nextlat_pt.eval.diagnostics.rank import effective_rank
from nextlat_pt.eval.diagnostics.report import (
    DiagnosticsResult,
    DiagnosticWindows,
    load_windows,
    run_diagnostics,
)

__all__ = [
    "DiagnosticWindows",
    "DiagnosticsResult",
    "ProbeResult",
    "collect_hidden_states",
    "effective_rank",
    "fit_linear_probe",
    "forward_windows",
    "load_windows",
    "run_diagnostics",
    "split_groups",
    "token_offset_probes",
]
